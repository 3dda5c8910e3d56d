"""ldp_med.training."""
