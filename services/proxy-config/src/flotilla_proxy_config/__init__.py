"""flotilla_proxy_config."""
