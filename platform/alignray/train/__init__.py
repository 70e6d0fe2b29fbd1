"""Training: preference losses and the trainers built on them."""
