"""An OpenAI-compatible server and a web chat page for a trained model: ``python -m dschat.serve --path DIR``."""
