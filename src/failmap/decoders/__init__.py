"""Decoders: vectors of a CLIP embedding space -> images.

Every decoder the pipeline can use answers the same calls:

- ``decode_images(embeds)``: vectors of the *image*-embedding region of the
  space (image embeddings, or interpolations between them and an SVM
  direction, see ``sphere.slerp``) -> uint8 images (N, H, W, 3).
- ``decode_texts(text_embeds)``: CLIP *text* embeddings -> images, through
  ``to_image_space`` (the modality bridge, ``bridge.ModalityBridge``).
- ``decode_captions(captions, text_embeds)``: the caption arm; a decoder with
  a text-to-image model (unCLIP's Stable Diffusion) uses the words, the world
  decoder the embeddings.
- ``space`` and ``dim``: which embedding space it was trained on, so that
  ``loader.check_compatible`` refuses a decoder from another space before any
  work.

One job a module, imported downwards only (no module imports one that
imports it):

- ``sphere``: unit-sphere geometry and the input check (numpy);
- ``bridge``: the modality bridge (numpy);
- ``images``: float tensors -> uint8 images;
- ``samplers``: the scheduler a decoder draws with (``decoder.sampler``);
- ``world``: ``EmbeddingDecoderPipeline``, the small diffusion model the
  embedded world trains for itself (model + sampling);
- ``unclip``: ``UnclipDecoder`` around pretrained Stable unCLIP;
- ``training``: trains and saves the world decoder (diffusers' EMA and SNR);
- ``quality``: does a decoder draw what a caption says (the quality bars);
- ``loader``: ``load_decoder`` (the decoder the params name), its sampling
  settings and the space check.

This file imports nothing: ``import failmap.decoders.sphere`` stays free of
diffusers.
"""
