"""GPU stage (sensitivity, AutoRound, grid-exact export), shared artifacts and orchestration."""
