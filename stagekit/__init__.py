"""What the stages share, below them: the manifest's method sections (data_section.py: the data
set and the views stages read; model_sections.py: the teacher and the student, their networks,
losses and training), the data views themselves (data.py), building, saving and loading networks
(models.py), training in one process or many (training.py), the INT8 settings from the manifest
to ONNX Runtime (int8_settings.py), the gate's rules (gate_rules.py) and paired statistics
(stats.py). No module here is a stage: a stage module imports these, never another stage.

The foundation imports no method code, so the sections that need it (the data sets, the model
and loss registries) register themselves in ``foundation.sections.SECTIONS`` from here, first, so
that a manifest lists them in the order users write them: data, teacher, student."""

from stagekit import data_section, model_sections  # noqa: F401 - registers the data, teacher and student sections
