from .null_preview import NullPreview

__all__ = ["NullPreview"]
