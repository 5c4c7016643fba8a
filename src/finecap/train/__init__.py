"""Training: configs, Lightning tasks (MLE, SCST) and the `train` entry point."""
