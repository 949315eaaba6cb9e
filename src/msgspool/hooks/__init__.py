"""Built-in hooks: outbound (preprocessors) and inbound (postprocessors)."""
