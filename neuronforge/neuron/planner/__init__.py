"""Capacity planning: the instance catalogue and prices, the per-NeuronCore memory model, the deployment planner."""
