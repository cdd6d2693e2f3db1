"""Where models registered before ``flows/tracking/`` existed find their pyfunc wrapper: their
stored model code imports it from here. New models import :mod:`flows.tracking.pyfunc_model`."""

from flows.tracking.pyfunc_model import PGLSegmenterModel

__all__ = ["PGLSegmenterModel"]
