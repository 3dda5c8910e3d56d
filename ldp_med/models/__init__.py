"""ldp_med.models."""
