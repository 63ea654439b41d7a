"""What the stages share, below them: the data views they read (data.py), building, saving and
loading their networks (models.py), training in one process or many (training.py), the INT8
settings from the manifest to ONNX Runtime (int8_settings.py) and the paired statistics of the
gate (stats.py). No module here is a stage: a stage module imports these, never another stage."""
