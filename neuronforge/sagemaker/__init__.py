"""SageMaker side of neuronforge: pure request builders, thin boto3 submitters, packaging and the serving wrapper.

Only absolute imports are used here, so `import sagemaker` inside this package always means the real SDK.
"""
