"""The vision tokenizer's training objective, as one differentiable MindSpore Cell.

VQ-VAE training (van den Oord et al.) on Emu3's architecture, through the model's own
modules so the result is an ordinary `Emu3VQModel` checkpoint:

    z   = quant_conv(temporal(encoder(x)))             continuous latents [M, C]
    k   = argmin_j |z - e_j|^2                         the codes (no gradient)
    z_q = z + stop_gradient(e_k - z)                   straight-through estimator
    x'  = decoder(z_q)                                 reconstruction
    loss = |x - x'|_1 + |x - x'|^2                     reconstruction (per pixel, mean)
         + |sg(z) - e_k|^2                             codebook (reported; see below)
         + beta |z - sg(e_k)|^2                        commitment: keeps latents near codes

The trainer does not learn the codebook from its term's gradient: the codes follow the latents
by moving averages (`CodebookEMA`).

An image is, as at inference, `temporal_downsample_factor` equal frames; only frame 0 of its
decoded clip is compared (the model decodes images that way). A video clip of a multiple of
that many frames is encoded to as many latent frames, and all its frames are compared.

The temporal blocks' BatchNorm layers stay in inference mode, their running statistics at
(0, 1): they act as trainable per-channel affine layers, and training and inference compute
the same function. Perceptual and adversarial losses are left out: the synthetic images this
is meant for are flat colours, which L1 + L2 reconstruct sharply.
"""

from __future__ import annotations

import mindspore as ms
from mindspore import nn, ops


class VQLoss(nn.Cell):
    """loss(images [B, 3, H, W], clips [Bv, T, 3, H, W] or None) for `model` (an Emu3VQModel).

    Returns (loss, (recon_l1, mse, codebook, commitment, codes, latents)): `codes` int32 [M]
    and `latents` [M, C] of every position of the batch (for codebook statistics and
    dead-code restarts).
    """

    def __init__(self, model, beta: float = 0.25):
        super().__init__(auto_prefix=False)
        self.model = model
        self.beta = float(beta)
        self.t_factor = model.config.temporal_downsample_factor

    def _latents(self, z):
        """z [B, z_ch, t, h, w] after the encoder's temporal stage -> [B*t*h*w, C] latents."""
        z = ops.cast(self.model.quant_conv(z), ms.float32)
        c = z.shape[1]
        return z.transpose(0, 2, 3, 4, 1).reshape(-1, c)

    def _quantize(self, flat):
        """Nearest codes and the straight-through quantized latents, with both VQ losses."""
        e = self.model.quantize.embedding.weight
        d = (flat * flat).sum(1, keepdims=True) + (e * e).sum(1).reshape(1, -1) - 2 * ops.matmul(flat, e.T)
        codes = ops.cast(ops.argmin(ops.stop_gradient(d), 1), ms.int32)
        chosen = ops.gather(e, codes, 0)
        codebook = ((ops.stop_gradient(flat) - chosen) ** 2).mean()
        commitment = ((flat - ops.stop_gradient(chosen)) ** 2).mean()
        quantized = flat + ops.stop_gradient(chosen - flat)
        return codes, quantized, codebook, commitment

    def _decode(self, quantized, b, t, h, w, frames_out):
        """Straight-through latents -> the first `frames_out` frames of each clip [B*frames_out, 3, H, W]."""
        m = self.model
        c = quantized.shape[-1]
        quant = quantized.reshape(b, t, h, w, c).transpose(0, 4, 1, 2, 3)  # [B, C, t, h, w]
        post = m.post_quant_conv(quant)
        both = m.decoder.temporal(ops.cat((post, quant), 0)).transpose(0, 2, 1, 3, 4)  # [2B, 4t, C, h, w]
        both = both[:, :frames_out]
        hid, zq = both[:b], both[b:]
        hid = hid.reshape((b * frames_out,) + tuple(hid.shape[2:]))
        zq = zq.reshape((b * frames_out,) + tuple(zq.shape[2:]))
        return ops.cast(m.decoder.frames(hid, zq), ms.float32)

    def _image_latents(self, images):
        """images [B, 3, H, W] -> (latents [B*h*w, C], h, w): each image as 4 equal frames."""
        m = self.model
        b = images.shape[0]
        f = m.encoder.frames(images)
        _, c, h, w = f.shape
        z = ops.broadcast_to(f.reshape(b, c, 1, h, w), (b, c, self.t_factor, h, w))
        return self._latents(m.encoder.temporal(z)), h, w

    def _clip_latents(self, clips):
        """clips [B, T, 3, H, W] -> (latents [B*(T/4)*h*w, C], h, w)."""
        m = self.model
        b, t = clips.shape[0], clips.shape[1]
        f = m.encoder.frames(clips.reshape((b * t,) + tuple(clips.shape[2:])))
        _, c, h, w = f.shape
        z = f.reshape(b, t, c, h, w).transpose(0, 2, 1, 3, 4)
        return self._latents(m.encoder.temporal(z)), h, w

    def _image_terms(self, images):
        flat, h, w = self._image_latents(images)
        codes, quantized, codebook, commitment = self._quantize(flat)
        recon = self._decode(quantized, images.shape[0], 1, h, w, 1)
        return recon, images, codes, flat, codebook, commitment

    def _clip_terms(self, clips):
        b, t = clips.shape[0], clips.shape[1]
        flat, h, w = self._clip_latents(clips)
        codes, quantized, codebook, commitment = self._quantize(flat)
        recon = self._decode(quantized, b, t // self.t_factor, h, w, t)
        target = clips.reshape((b * t,) + tuple(clips.shape[2:]))
        return recon, target, codes, flat, codebook, commitment

    def latents(self, images, clips=None):
        """The continuous latents [M, C] of `images` (and `clips`), in the order `construct` returns
        them, without the decoder: what the k-means initialisation clusters."""
        flat = self._image_latents(images)[0]
        return flat if clips is None else ops.cat((flat, self._clip_latents(clips)[0]), 0)

    def construct(self, images, clips=None):
        recon, target, codes, flat, codebook, commitment = self._image_terms(images)
        diff = ops.abs(recon - target).reshape(-1)
        if clips is not None:  # each term a mean over all pixels / positions of both parts
            recon2, target2, codes2, flat2, codebook2, commitment2 = self._clip_terms(clips)
            diff = ops.cat((diff, ops.abs(recon2 - target2).reshape(-1)))
            m1, m2 = codes.shape[0], codes2.shape[0]
            codebook = (codebook * m1 + codebook2 * m2) / (m1 + m2)
            commitment = (commitment * m1 + commitment2 * m2) / (m1 + m2)
            codes, flat = ops.cat((codes, codes2)), ops.cat((flat, flat2), 0)
        l1 = diff.mean()
        mse = (diff * diff).mean()
        loss = l1 + mse + codebook + self.beta * commitment
        return loss, (l1, mse, codebook, commitment, codes, flat)


class CodebookEMA(nn.Cell):
    """Codebook updates by exponential moving averages (VQ-VAE-2): after each step every code
    moves to the running mean of the latents assigned to it (counts Laplace-smoothed), with no
    learning rate, so the codes keep up with the encoder; the codebook is then not a parameter
    of the optimiser. Measured on the shapes data: with the codebook learnt by AdamW instead,
    the encoder's latents ran away from the codes (the codebook term grew from 1e-4 to 1.4 in
    30 steps) and reconstruction stalled."""

    def __init__(self, codebook, decay: float = 0.95, eps: float = 1e-5):
        super().__init__(auto_prefix=False)
        self.codebook = codebook
        k = codebook.shape[0]
        self.decay, self.eps, self.k = float(decay), float(eps), k
        self.counts = ms.Parameter(ops.ones((k,), ms.float32), name="ema.counts", requires_grad=False)
        self.sums = ms.Parameter(ops.zeros(codebook.shape, ms.float32), name="ema.sums", requires_grad=False)

    def construct(self, codes, latents):
        onehot = ops.one_hot(codes, self.k, ops.ones((), ms.float32), ops.zeros((), ms.float32))
        counts = self.counts * self.decay + onehot.sum(0) * (1 - self.decay)
        sums = self.sums * self.decay + ops.matmul(onehot.T, ops.stop_gradient(latents)) * (1 - self.decay)
        n = counts.sum()
        smoothed = (counts + self.eps) / (n + self.k * self.eps) * n
        ops.assign(self.counts, counts)
        ops.assign(self.sums, sums)
        ops.assign(self.codebook, sums / smoothed.reshape(-1, 1))
        return counts
