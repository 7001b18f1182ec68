"""Multimodal VAEs for partially observed data."""
