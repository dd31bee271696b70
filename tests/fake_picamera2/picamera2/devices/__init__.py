from .imx708 import IMX708

__all__ = ["IMX708"]
