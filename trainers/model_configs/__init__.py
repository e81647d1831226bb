"""open_clip architecture configs of the PathCLIP variants (JSON, registered with open_clip.add_model_config)."""
