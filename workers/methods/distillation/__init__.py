"""Knowledge distillation: losses, training data, checkpoints, the student and the loop."""
