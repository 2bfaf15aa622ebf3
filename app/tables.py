"""Every ORM module, imported once so ``Base.metadata`` and the mappers know every table."""

from app.core.keys import ApiKey
from app.datasets.orm import Dataset
from app.jobs.orm import EpochRecord, Job
from app.models.orm import Model

__all__ = ["ApiKey", "Dataset", "EpochRecord", "Job", "Model"]
