// Parameter counts and activation sizes of the networks, computed from the recipe alone (no Python). The
// formulas follow python-worker/dmd2_worker/models/tiny_unet.py and discriminator_head.py layer by layer;
// test/plan.test.ts checks the counts against the Python classes.

/** The TinyUNet's `arch_config` (tiny_unet.py default_arch_config; teacher_training.py builds it from the recipe). */
export interface UNetArch {
  inChannels: number;
  imageSize: number;
  channels: number;
  channelMult: number[];
  /** null: unconditional (no class embedding) */
  numClasses: number | null;
}

/** The recipe keys the built-in network is built from (a recipe has them; this folder imports no recipe module). */
export interface BuiltinNetworkKeys {
  data: { gmm: { image_size: number; num_classes: number } };
  teacher: { builtin: { channels: number } };
}

/** The arch every role's network has for this recipe: the built-in teacher's, copied by generator and fake score. */
export function unetArch(r: BuiltinNetworkKeys): UNetArch {
  return {
    inChannels: 1,
    imageSize: r.data.gmm.image_size,
    channels: r.teacher.builtin.channels,
    channelMult: [1, 2],
    numClasses: r.data.gmm.num_classes,
  };
}

/** Why the worker would refuse this arch (image size not divisible by 2^levels), or null. */
export function unetArchProblem(a: UNetArch): string | null {
  const levels = a.channelMult.length;
  if (levels < 1 || a.imageSize % 2 ** levels !== 0) {
    return `data.gmm.image_size ${a.imageSize} is not divisible by ${2 ** levels} (the UNet folds 2x2 and downsamples ${levels - 1} time(s)); the workers will refuse it`;
  }
  return null;
}

const linear = (fanIn: number, fanOut: number) => fanIn * fanOut + fanOut;
const conv = (cin: number, cout: number, k: number) => cin * cout * k * k + cout;
const groupNorm = (ch: number) => 2 * ch;

/**
 * ResBlock(ch, E): GroupNorm, conv 3x3, Linear(E, ch) for the embedding, GroupNorm, conv 3x3
 * = 18 ch^2 + E ch + 7 ch.
 */
function resBlockParams(ch: number, embDim: number): number {
  return groupNorm(ch) + conv(ch, ch, 3) + linear(embDim, ch) + groupNorm(ch) + conv(ch, ch, 3);
}

/**
 * TinyUNet parameters. With c = channels, E = 4c, chs = c * channel_mult, L levels, k = in_channels, K classes:
 *   time MLP      Linear(c, E) + Linear(E, E)
 *   class emb     (K + 1) E                      (only when conditional; row K is the null class)
 *   conv_in       conv3x3(4k -> chs[0])          (the input is folded 2x2 into channels first)
 *   per level i < L-1: ResBlock(chs[i]) down, conv3x3 stride 2 (chs[i] -> chs[i+1]),
 *                      ConvTranspose 2x2 (chs[i+1] -> chs[i]), ResBlock(chs[i]) up
 *   mid           ResBlock(chs[L-1])
 *   out           GroupNorm(chs[0]) + conv3x3(chs[0] -> 4k)
 *   skip gate     Linear(E, k)
 * The image size does not enter: every layer is a convolution. For the default channel_mult [1, 2] and one
 * input channel this is 170c^2 + 118c + 4c(K+1) + 5 (45,733 for c = 16, K = 4).
 */
export function unetParams(a: UNetArch): number {
  const c = a.channels;
  const E = 4 * c;
  const k = a.inChannels;
  const chs = a.channelMult.map((m) => c * m);
  const L = chs.length;
  let n = linear(c, E) + linear(E, E);
  if (a.numClasses !== null) n += (a.numClasses + 1) * E;
  n += conv(4 * k, chs[0]!, 3);
  for (let i = 0; i < L - 1; i++) {
    const ch = chs[i]!;
    const next = chs[i + 1]!;
    n += resBlockParams(ch, E) + conv(ch, next, 3) + (next * ch * 2 * 2 + ch) + resBlockParams(ch, E);
  }
  n += resBlockParams(chs[L - 1]!, E);
  n += groupNorm(chs[0]!) + conv(chs[0]!, 4 * k, 3);
  n += linear(E, k);
  return n;
}

/** The bottleneck the discriminator head reads: channels * channel_mult[-1] at image_size / 2^L. */
export function unetFeatures(a: UNetArch): { channels: number; size: number } {
  const L = a.channelMult.length;
  return { channels: a.channels * a.channelMult[L - 1]!, size: Math.floor(a.imageSize / 2 ** L) };
}

/** How many conv 4x4 stride 2 pad 1 blocks the head stacks until the map is 1x1: size -> floor(size / 2). */
export function headBlocks(featureSize: number): number {
  let blocks = 0;
  for (let s = featureSize; s > 1; s = Math.floor((s + 2 - 4) / 2) + 1) blocks++;
  return blocks;
}

/** DiscriminatorHead(C, s): per block conv4x4(C -> C) + GroupNorm(C) = 16C^2 + 3C, then a 1x1 conv to a logit (C + 1). */
export function headParams(featureChannels: number, featureSize: number): number {
  const C = featureChannels;
  return headBlocks(featureSize) * (conv(C, C, 4) + groupNorm(C)) + conv(C, 1, 1);
}

/** Intermediate tensors of one ResBlock, per pixel and channel: norm, SiLU, conv, +emb, norm, SiLU, conv, +x. */
const RES_BLOCK_MAPS = 8;

/**
 * An estimate of the float32 values one forward pass keeps for one sample: the sum of the sizes of the
 * intermediate tensors, walking the UNet's forward (`encoderOnly`: up to the bottleneck, what `features`
 * runs for the discriminator). Autograd saves roughly these for the backward pass; a no-grad forward frees
 * them as it goes, so for it this is an upper bound. Against the tensors torch actually saves (counted with
 * torch.autograd.graph.saved_tensors_hooks) it was within 25% for channels 16-64 and image sizes 8-32.
 */
export function unetActivationsPerSample(a: UNetArch, encoderOnly = false): number {
  const c = a.channels;
  const E = 4 * c;
  const k = a.inChannels;
  const chs = a.channelMult.map((m) => c * m);
  const L = chs.length;
  const pixels = (level: number) => (a.imageSize / 2 / 2 ** level) ** 2; // level 0 runs at image_size / 2
  const resBlock = (level: number) => RES_BLOCK_MAPS * chs[level]! * pixels(level) + chs[level]!; // + the embedding's Linear
  let n = c + 3 * E + (a.numClasses === null ? 0 : 2 * E); // sinusoid, MLP (Linear, SiLU, Linear), class emb + sum
  n += 4 * k * pixels(0) + chs[0]! * pixels(0); // pixel_unshuffle, conv_in
  for (let i = 0; i < L - 1; i++) n += resBlock(i) + chs[i + 1]! * pixels(i + 1);
  n += resBlock(L - 1);
  if (encoderOnly) return n;
  for (let i = 0; i < L - 1; i++) n += 2 * chs[i]! * pixels(i) + resBlock(i); // upsample, + skip, ResBlock
  n += 2 * chs[0]! * pixels(0) + 4 * k * pixels(0); // norm_out, SiLU, conv_out
  n += 3 * k * a.imageSize ** 2 + k; // pixel_shuffle, gate * x, sum; the gate
  return n;
}

/**
 * Multiply-accumulates of one forward pass for one sample: every convolution's weights times the pixels of its
 * output, and the Linear layers once (the embeddings). Norms, activations and additions are left out (a few %
 * at most). It measures how much work one op gives torch's threads; the image size enters squared. For the
 * default channel_mult [1, 2] and one input channel, image size s: (60.5 c^2 + 72 c) (s/2)^2 + 36 c^2 + 4c
 * (275,520 for c = 16, s = 8). Equal to what torch.utils.flop_counter.FlopCounterMode counts (its FLOPs / 2).
 */
export function unetMacsPerSample(a: UNetArch): number {
  const c = a.channels;
  const E = 4 * c;
  const k = a.inChannels;
  const chs = a.channelMult.map((m) => c * m);
  const L = chs.length;
  const pixels = (level: number) => (a.imageSize / 2 / 2 ** level) ** 2; // level 0 runs at image_size / 2
  const conv3 = (cin: number, cout: number, P: number) => cin * cout * 9 * P;
  const resBlock = (level: number) => 2 * conv3(chs[level]!, chs[level]!, pixels(level)) + E * chs[level]!;
  let n = c * E + E * E + E * k; // time MLP, skip gate
  n += conv3(4 * k, chs[0]!, pixels(0)) + conv3(chs[0]!, 4 * k, pixels(0)); // conv_in, conv_out
  for (let i = 0; i < L - 1; i++) {
    n += 2 * resBlock(i); // down and up
    n += conv3(chs[i]!, chs[i + 1]!, pixels(i + 1)); // stride-2 conv
    n += chs[i + 1]! * chs[i]! * 4 * pixels(i + 1); // ConvTranspose 2x2 stride 2: each input pixel makes a 2x2 patch
  }
  return n + resBlock(L - 1);
}
