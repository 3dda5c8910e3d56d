"""ldp_med.sampling."""
