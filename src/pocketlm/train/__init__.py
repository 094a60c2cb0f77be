"""ONE training loop; pretraining, fine-tuning and distillation differ only in batches, loss and trainable parameters."""
