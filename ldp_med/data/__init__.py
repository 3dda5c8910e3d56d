"""ldp_med.data."""
