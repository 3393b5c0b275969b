"""Who is asking (tokens), what they may see (rules as SQL), and the trail of what they did (audit)."""
from .context import AccessContext, AccessRefused

__all__ = ["AccessContext", "AccessRefused"]
