"""The networks FRESCO runs: Stable Diffusion 1.5 components and the tiny random-weight stand-in (sd.py), the
optical-flow estimators behind one interface (flow.py; GMFlow in gmflow.py), saliency (saliency.py; EGNet in
egnet.py), the ControlNet annotators (HED in annotators.py, MiDaS depth in midas.py) and the random-weight
stand-ins of every model the published configs name (test_models.py); the models users bring (addons.py:
single-file checkpoints, LoRA, embeddings, IP-Adapter, several ControlNets; stand-ins in test_addons.py).
diffusers/transformers are imported only when a model is built."""
from .flow import FLOW_ESTIMATORS, DISFlow, FlowEstimator, RAFTFlow, batch_flows, flow_pair, get_flow_estimator
from .sd import (CONTROL_TYPES, CONTROLNET_IDS, TINY, TINY_NAMES, Components, load_components, make_scheduler,
                 resolve_device, resolve_dtype, tiny_components)

__all__ = ["FLOW_ESTIMATORS", "DISFlow", "FlowEstimator", "RAFTFlow", "batch_flows", "flow_pair", "get_flow_estimator",
           "CONTROL_TYPES", "CONTROLNET_IDS", "TINY", "TINY_NAMES", "Components", "load_components",
           "make_scheduler", "resolve_device", "resolve_dtype", "tiny_components"]
