"""Training tasks: each module builds TrainTasks for the one loop (train/loop.py)."""
