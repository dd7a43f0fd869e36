"""Scale-out: batch embedding on a Ray cluster (`ray_embed`) and a Triton Inference Server model repository
(`triton`). Both use the runtime's public API only; Ray and tritonclient are optional extras."""
