"""The code location: the pipelines declared in the pipelines file (``icetrain.yaml``), nothing else.

The file is found as ``icetrain train`` finds it: ``$ICETRAIN_CONFIG``, else ``./icetrain.yaml``.
"""

from assets.pipelines import project_definitions
from pipeline.config.project import load_project

defs = project_definitions(load_project())
