"""Every ORM module, for Alembic: ``Base.metadata`` then knows every table.

Each ORM module imports the classes its foreign keys point at, so importing any one of them
registers what its rows need.
"""

from app.core.keys import ApiKey
from app.datasets.orm import Dataset
from app.jobs.orm import EpochRecord, Job
from app.models.orm import Model
from app.paths.orm import PathPoint, PathResult

__all__ = ["ApiKey", "Dataset", "EpochRecord", "Job", "Model", "PathPoint", "PathResult"]
