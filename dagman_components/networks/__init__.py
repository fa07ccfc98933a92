"""Networks: the semantic-attention Swin encoder and the pretraining wrapper with its heads."""

from dagman_components.networks.classifier import (
    AttentionInferer,
    BinaryClassificationLoss,
    SAClassifier,
    save_cpu_state_dict,
)
from dagman_components.networks.pretrain_model import DAGMaNPretrainModel
from dagman_components.networks.sa_swin import (
    ARCHITECTURE_ARGS,
    BUNDLE_ENCODER_ARGS,
    EncoderOutput,
    SASwinEncoder,
    encoder_args_with_defaults,
    encoder_checkpoint,
    encoder_source,
    load_encoder_state_dict,
    make_encoder,
    read_encoder_file,
    save_encoder,
    swin_unetr_state_dict,
)
from dagman_components.networks.segmentation import SASwinUNETR
from dagman_components.networks.semantic_attention import (
    LayerScaleTransformerBlock,
    SemanticAttention,
    SemanticAttentionOutput,
)

__all__ = [
    "AttentionInferer",
    "BinaryClassificationLoss",
    "SAClassifier",
    "save_cpu_state_dict",
    "DAGMaNPretrainModel",
    "EncoderOutput",
    "LayerScaleTransformerBlock",
    "SASwinEncoder",
    "SASwinUNETR",
    "SemanticAttention",
    "SemanticAttentionOutput",
    "load_encoder_state_dict",
    "swin_unetr_state_dict",
    "ARCHITECTURE_ARGS",
    "BUNDLE_ENCODER_ARGS",
    "encoder_args_with_defaults",
    "encoder_checkpoint",
    "encoder_source",
    "make_encoder",
    "read_encoder_file",
    "save_encoder",
]
