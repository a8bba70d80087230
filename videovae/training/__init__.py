"""Training and fine-tuning videovae models: `videovae train` (see `videovae.training.trainer`)."""
