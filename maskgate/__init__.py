"""maskgate: a Qwen3-VL verifier that answers ACCEPT or REJECT for a mask group overlaid on an image."""
