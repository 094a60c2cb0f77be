"""Fine-tuning data written by a teacher behind an OpenAI-compatible chat-completions API
(black-box distillation): `pocketlm synth`."""
