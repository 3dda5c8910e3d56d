"""ldp_med.integration."""
