"""Images in chat prompts, apart from the model: reading an image part's bytes (`source`), checking its header
with Pillow (`probe`), counting its tokens from the checkpoint's processor settings (`vision`), rendering the chat
with image placeholders and expanding each into its run of image tokens (`prompt`), all driven by `intake`, which
the front end calls once per request. The workers decode the pixels; nothing here imports torch or transformers.
"""

from autoglm_rpc.media.intake import ImageIntake, PreparedImage
from autoglm_rpc.media.vision import VisionSpec, read_vision_spec

__all__ = ["ImageIntake", "PreparedImage", "VisionSpec", "read_vision_spec"]
