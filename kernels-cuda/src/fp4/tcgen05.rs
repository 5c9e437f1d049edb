//! The data-center Blackwell (sm_100a / sm_103a) FP4 path: what `kernels/fp4_tcgen05.cu` relies
//! on, encoded and modelled on the host.
//!
//! `tcgen05.mma.cta_group::1.kind::mxf8f6f4.block_scale.scale_vec::1X` reads A (M x 32) and B
//! (32 x N) from shared memory through 64-bit matrix descriptors, the scale factors from tensor
//! memory, and accumulates D (M x N f32) in tensor memory; a 32-bit instruction descriptor
//! gives shapes, formats and which byte of each scale word to use. This module has
//!
//! - the bit packing of the instruction descriptor ([`InstrDesc`], PTX ISA "Instruction
//!   descriptor format for .kind::mxf8f6f4": the fields of [`IDESC_FIELDS`]) and of the
//!   shared-memory descriptor ([`SmemDesc`], PTX ISA "Shared memory descriptor layout":
//!   [`SMEM_DESC_FIELDS`]); the kernel's descriptor constants are these encoders' output, passed
//!   to NVRTC as `-D` options ([`kernel_defines`]);
//! - the canonical K-major layout without swizzle ([`kmajor_offset`]) and the E2M1 packing that
//!   `kind::mxf8f6f4` wants in shared memory ([`e2m1_padded`]: 16 elements in 8 bytes, 8 bytes
//!   of padding);
//! - the scale factors' way into tensor memory: a 32 x 16-byte shared-memory matrix whose row
//!   `l` holds the scale words of rows `l, 32 + l, 64 + l, 96 + l` ([`sf_word_index`]), copied by
//!   `tcgen05.cp.32x128b.warpx4` to 32 lanes x 4 columns and replicated into each 32-lane quarter
//!   ([`cp_32x128b_warpx4`]), so that the scale of row `m` sits in lane `m`, column
//!   `base + m / 32`, byte `sf_id` (the layout DeepGEMM's and CUTLASS's sm100 block-scaled GEMMs
//!   build the same way; the PTX ISA gives it only as figures);
//! - the staging of one K chunk as the kernel does it ([`stage_a`], [`stage_b`]) and a CPU model
//!   of the instruction that reads those bytes back through the descriptors
//!   ([`mma_block_scale`]), composed into [`gemm_model`].
//!
//! The model reads what the encoders wrote, so the tests prove the packing, descriptors and
//! layouts consistent with this reading of the PTX ISA; only the first-use self-check on an
//! sm_100 device can prove the reading itself.

use super::formats::{e2m1_value, e4m3_value, ue8m0_value};
use super::model::ModelError;
use super::pack::{Mxfp4Device, Mxfp8Rows};

/// A bit field: name, lowest bit, width.
pub type Field = (&'static str, u32, u32);

/// The instruction descriptor of `.kind::mxf8f6f4` / `.kind::mxf4` (PTX ISA 9.7.16.4.2): every
/// field the encoder writes; bits 3, 6 and 31 are reserved (zero here).
pub const IDESC_FIELDS: &[Field] = &[
    ("sparsity_selector", 0, 2),
    ("sparsity", 2, 1),
    ("sfb_id", 4, 2),
    ("atype", 7, 3),
    ("btype", 10, 3),
    ("negate_a", 13, 1),
    ("negate_b", 14, 1),
    ("transpose_a", 15, 1),
    ("transpose_b", 16, 1),
    ("n_shr3", 17, 6),
    ("scale_type", 23, 1),
    ("m_shr4", 24, 5),
    ("sfa_id", 29, 2),
];

/// The shared-memory descriptor (PTX ISA 9.7.16.4.1, Table "Shared memory descriptor layout").
pub const SMEM_DESC_FIELDS: &[Field] = &[
    ("start_address_shr4", 0, 14),
    ("leading_byte_offset_shr4", 16, 14),
    ("stride_byte_offset_shr4", 32, 14),
    ("fixed_0b001", 46, 3),
    ("base_offset", 49, 3),
    ("lbo_mode", 52, 1),
    ("fixed_zero", 53, 8),
    ("swizzle", 61, 3),
];

/// `atype` / `btype` codes of `.kind::mxf8f6f4`.
pub mod format {
    /// E4M3.
    pub const E4M3: u8 = 0;
    /// E5M2.
    pub const E5M2: u8 = 1;
    /// E2M3.
    pub const E2M3: u8 = 3;
    /// E3M2.
    pub const E3M2: u8 = 4;
    /// E2M1.
    pub const E2M1: u8 = 5;
}

fn field(fields: &[Field], name: &str) -> (u32, u32) {
    let f = fields.iter().find(|f| f.0 == name);
    f.map_or((0, 0), |f| (f.1, f.2))
}

fn put(word: &mut u64, fields: &[Field], name: &str, v: u64) -> Result<(), String> {
    let (lo, width) = field(fields, name);
    if width == 0 || v >> width != 0 {
        return Err(format!("{name} = {v} does not fit its {width}-bit field"));
    }
    *word |= v << lo;
    Ok(())
}

fn get(word: u64, fields: &[Field], name: &str) -> u64 {
    let (lo, width) = field(fields, name);
    (word >> lo) & ((1u64 << width) - 1)
}

fn covered(fields: &[Field]) -> u64 {
    fields
        .iter()
        .fold(0u64, |m, f| m | (((1u64 << f.2) - 1) << f.1))
}

/// The instruction descriptor of a block-scaled `kind::mxf8f6f4` MMA.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InstrDesc {
    /// Sparsity selector (0..4; dense here).
    pub sparsity_selector: u8,
    /// Sparse A.
    pub sparse: bool,
    /// Which byte of each B scale word (0..4).
    pub sfb_id: u8,
    /// A format ([`format`](mod@format)).
    pub atype: u8,
    /// B format ([`format`](mod@format)).
    pub btype: u8,
    /// Negate A.
    pub negate_a: bool,
    /// Negate B.
    pub negate_b: bool,
    /// A MN-major (false: K-major).
    pub transpose_a: bool,
    /// B MN-major (false: K-major).
    pub transpose_b: bool,
    /// N: 8..=256, a multiple of 8.
    pub n: u32,
    /// Scales are UE8M0 (false: UE4M3).
    pub scale_ue8m0: bool,
    /// M: a multiple of 16 (64, 128 or 256 are valid shapes).
    pub m: u32,
    /// Which byte of each A scale word (0..4).
    pub sfa_id: u8,
}

impl InstrDesc {
    /// The descriptor `fp4_tcgen05.cu` issues (with both scale ids zero; the kernel ORs in the
    /// K step's byte): M = 128 weight rows (E2M1), N = 32 token slots (E4M3), UE8M0 scales, both
    /// K-major, dense.
    pub fn kernel() -> Self {
        InstrDesc {
            sparsity_selector: 0,
            sparse: false,
            sfb_id: 0,
            atype: format::E2M1,
            btype: format::E4M3,
            negate_a: false,
            negate_b: false,
            transpose_a: false,
            transpose_b: false,
            n: TILE_N as u32,
            scale_ue8m0: true,
            m: TILE_M as u32,
            sfa_id: 0,
        }
    }

    /// The 32-bit descriptor; errors on a value that does not fit its field or an M / N that is
    /// not a multiple of its field's unit.
    pub fn encode(&self) -> Result<u32, String> {
        if !self.n.is_multiple_of(8) || !self.m.is_multiple_of(16) {
            return Err(format!(
                "M = {} / N = {}: M must be a multiple of 16, N of 8",
                self.m, self.n
            ));
        }
        let f = IDESC_FIELDS;
        let mut w = 0u64;
        put(
            &mut w,
            f,
            "sparsity_selector",
            self.sparsity_selector as u64,
        )?;
        put(&mut w, f, "sparsity", self.sparse as u64)?;
        put(&mut w, f, "sfb_id", self.sfb_id as u64)?;
        put(&mut w, f, "atype", self.atype as u64)?;
        put(&mut w, f, "btype", self.btype as u64)?;
        put(&mut w, f, "negate_a", self.negate_a as u64)?;
        put(&mut w, f, "negate_b", self.negate_b as u64)?;
        put(&mut w, f, "transpose_a", self.transpose_a as u64)?;
        put(&mut w, f, "transpose_b", self.transpose_b as u64)?;
        put(&mut w, f, "n_shr3", (self.n >> 3) as u64)?;
        put(&mut w, f, "scale_type", self.scale_ue8m0 as u64)?;
        put(&mut w, f, "m_shr4", (self.m >> 4) as u64)?;
        put(&mut w, f, "sfa_id", self.sfa_id as u64)?;
        Ok(w as u32)
    }

    /// Decode a descriptor; errors if a reserved bit is set.
    pub fn decode(w: u32) -> Result<Self, String> {
        let w = w as u64;
        let extra = w & !covered(IDESC_FIELDS);
        if extra != 0 {
            return Err(format!(
                "instruction descriptor {w:#010x}: reserved bits {extra:#x} set"
            ));
        }
        let f = IDESC_FIELDS;
        Ok(InstrDesc {
            sparsity_selector: get(w, f, "sparsity_selector") as u8,
            sparse: get(w, f, "sparsity") != 0,
            sfb_id: get(w, f, "sfb_id") as u8,
            atype: get(w, f, "atype") as u8,
            btype: get(w, f, "btype") as u8,
            negate_a: get(w, f, "negate_a") != 0,
            negate_b: get(w, f, "negate_b") != 0,
            transpose_a: get(w, f, "transpose_a") != 0,
            transpose_b: get(w, f, "transpose_b") != 0,
            n: (get(w, f, "n_shr3") as u32) << 3,
            scale_ue8m0: get(w, f, "scale_type") != 0,
            m: (get(w, f, "m_shr4") as u32) << 4,
            sfa_id: get(w, f, "sfa_id") as u8,
        })
    }
}

/// Swizzling modes of the shared-memory descriptor.
pub mod swizzle {
    /// No swizzling (the canonical interleaved layout; the kernel's).
    pub const NONE: u8 = 0;
    /// 128-byte swizzle with 32-byte atoms.
    pub const B128_ATOM32: u8 = 1;
    /// 128-byte swizzle.
    pub const B128: u8 = 2;
    /// 64-byte swizzle.
    pub const B64: u8 = 4;
    /// 32-byte swizzle.
    pub const B32: u8 = 6;
}

/// A shared-memory matrix descriptor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SmemDesc {
    /// Matrix start address (shared-window byte address, 16-byte aligned, < 2^18).
    pub start: u32,
    /// Leading-dimension byte offset (K-major, no swizzle: between core matrices along K).
    pub lbo: u32,
    /// Stride-dimension byte offset (between groups of 8 rows).
    pub sbo: u32,
    /// Matrix base offset (0 for the layouts here).
    pub base_offset: u8,
    /// Leading dimension as an absolute address (sm_103a only; false here).
    pub lbo_absolute: bool,
    /// [`swizzle`] mode.
    pub swizzle: u8,
}

impl SmemDesc {
    /// The operand descriptor of the kernel's A and B tiles, start address 0: K-major without
    /// swizzle, [`KERNEL_LBO`] / [`KERNEL_SBO`].
    pub fn kernel_operand() -> Self {
        SmemDesc {
            start: 0,
            lbo: KERNEL_LBO as u32,
            sbo: KERNEL_SBO as u32,
            base_offset: 0,
            lbo_absolute: false,
            swizzle: swizzle::NONE,
        }
    }

    /// The descriptor of the kernel's scale-factor source of `tcgen05.cp.32x128b`: 32 rows of 16
    /// bytes, 8-row groups 128 bytes apart, no swizzle.
    pub fn kernel_scales() -> Self {
        SmemDesc {
            start: 0,
            lbo: 0,
            sbo: 128,
            base_offset: 0,
            lbo_absolute: false,
            swizzle: swizzle::NONE,
        }
    }

    /// The 64-bit descriptor. Errors on an unaligned or out-of-range address / offset or an
    /// invalid swizzle mode.
    pub fn encode(&self) -> Result<u64, String> {
        for (name, v) in [("start", self.start), ("lbo", self.lbo), ("sbo", self.sbo)] {
            if v % 16 != 0 || v >= 1 << 18 {
                return Err(format!(
                    "{name} = {v}: must be 16-byte aligned and below 2^18"
                ));
            }
        }
        if !matches!(self.swizzle, 0 | 1 | 2 | 4 | 6) {
            return Err(format!("swizzle mode {} is invalid", self.swizzle));
        }
        let f = SMEM_DESC_FIELDS;
        let mut w = 0u64;
        put(&mut w, f, "start_address_shr4", (self.start >> 4) as u64)?;
        put(
            &mut w,
            f,
            "leading_byte_offset_shr4",
            (self.lbo >> 4) as u64,
        )?;
        put(&mut w, f, "stride_byte_offset_shr4", (self.sbo >> 4) as u64)?;
        put(&mut w, f, "fixed_0b001", 1)?;
        put(&mut w, f, "base_offset", self.base_offset as u64)?;
        put(&mut w, f, "lbo_mode", self.lbo_absolute as u64)?;
        put(&mut w, f, "swizzle", self.swizzle as u64)?;
        Ok(w)
    }

    /// Decode a descriptor; errors on reserved bits or a wrong fixed field.
    pub fn decode(w: u64) -> Result<Self, String> {
        let f = SMEM_DESC_FIELDS;
        let extra = w & !covered(f);
        if extra != 0 || get(w, f, "fixed_0b001") != 1 || get(w, f, "fixed_zero") != 0 {
            return Err(format!(
                "shared-memory descriptor {w:#018x}: reserved or fixed bits wrong"
            ));
        }
        Ok(SmemDesc {
            start: (get(w, f, "start_address_shr4") as u32) << 4,
            lbo: (get(w, f, "leading_byte_offset_shr4") as u32) << 4,
            sbo: (get(w, f, "stride_byte_offset_shr4") as u32) << 4,
            base_offset: get(w, f, "base_offset") as u8,
            lbo_absolute: get(w, f, "lbo_mode") != 0,
            swizzle: get(w, f, "swizzle") as u8,
        })
    }

    /// What the kernel does with an encoded descriptor of start 0 (`fp4t_desc`): OR in a start
    /// address as `(addr & 0x3FFFF) >> 4`.
    pub fn with_start(hi: u64, addr: u32) -> u64 {
        hi | (((addr & 0x3ffff) >> 4) as u64)
    }
}

/// Weight rows per tile (MMA M; one tensor-memory lane each).
pub const TILE_M: usize = 128;
/// Token slots per tile (MMA N).
pub const TILE_N: usize = 32;
/// Scale blocks (K = 32 each) per staged K chunk: one byte of each scale word apiece.
pub const CHUNK_KB: usize = 4;
/// Bytes per staged row: CHUNK_KB blocks of 32 one-byte slots.
pub const ROW_BYTES: usize = 32 * CHUNK_KB;
/// The kernel's leading-dimension byte offset: core matrices along K are adjacent.
pub const KERNEL_LBO: usize = 128;
/// The kernel's stride-dimension byte offset: one 8-row group of ROW_BYTES / 16 core matrices.
pub const KERNEL_SBO: usize = 8 * ROW_BYTES;
/// Tensor-memory columns of the kernel: D gate / up, SFA gate / up, SFB (`FP4T_COL_*`).
pub const COL_D: [usize; 2] = [0, 32];
/// SFA columns (4 each).
pub const COL_SFA: [usize; 2] = [64, 68];
/// SFB columns (4).
pub const COL_SFB: usize = 72;
/// Tensor-memory columns allocated per CTA.
pub const TMEM_COLS: usize = 128;

/// Byte offset of (row, byte `kbyte` along K) in the canonical K-major layout without swizzle:
/// 8 x 16-byte core matrices of 128 contiguous bytes (row `r % 8` at `16 (r % 8)`), the next
/// core matrix along K `lbo` bytes on, the next 8 rows `sbo` bytes on (`fp4t_off` with
/// [`KERNEL_LBO`] / [`KERNEL_SBO`]).
pub fn kmajor_offset(row: usize, kbyte: usize, lbo: usize, sbo: usize) -> usize {
    (row / 8) * sbo + (kbyte / 16) * lbo + (row % 8) * 16 + kbyte % 16
}

/// One MXFP4 block's 16 ggml bytes (element `j` in the low nibble of byte `j`, element
/// `16 + j` in its high nibble) in the 32-byte form `kind::mxf8f6f4` reads E2M1 from shared
/// memory: elements 0..16 packed two to a byte (the even one in the low nibble) in bytes 0..8,
/// 8 bytes of zero padding, elements 16..32 in bytes 16..24, padding (`fp4t_pack_e2m1`).
pub fn e2m1_padded(qs: &[u8; 16]) -> [u8; 32] {
    let mut out = [0u8; 32];
    for i in 0..8 {
        out[i] = (qs[2 * i] & 0x0f) | (qs[2 * i + 1] << 4);
        out[16 + i] = (qs[2 * i] >> 4) | (qs[2 * i + 1] & 0xf0);
    }
    out
}

/// `__byte_perm(x, y, s)` (without the sign-replicate mode): result byte `i` is byte
/// `(s >> 4i) & 7` of the 8 bytes `x, y` (x the low four).
pub fn byte_perm(x: u32, y: u32, s: u32) -> u32 {
    let v = (x as u64) | ((y as u64) << 32);
    (0..4).fold(0u32, |r, i| {
        let sel = (s >> (4 * i)) & 7;
        r | ((((v >> (8 * sel)) & 0xff) as u32) << (8 * i))
    })
}

/// `fp4t_pack_e2m1` line by line: the block's four 32-bit words in, the two 16-byte halves of
/// [`e2m1_padded`] out as words (tested equal to it).
pub fn e2m1_padded_words(q: [u32; 4]) -> ([u32; 4], [u32; 4]) {
    let mut l = [0u32; 2];
    let mut h = [0u32; 2];
    for i in 0..2 {
        let (a, b) = (q[2 * i], q[2 * i + 1]);
        let (la, lb) = (a & 0x0f0f_0f0f, b & 0x0f0f_0f0f);
        let (ha, hb) = ((a >> 4) & 0x0f0f_0f0f, (b >> 4) & 0x0f0f_0f0f);
        let pla = (la | (la >> 4)) & 0x00ff_00ff;
        let plb = (lb | (lb >> 4)) & 0x00ff_00ff;
        let pha = (ha | (ha >> 4)) & 0x00ff_00ff;
        let phb = (hb | (hb >> 4)) & 0x00ff_00ff;
        l[i] = byte_perm(pla, plb, 0x6420);
        h[i] = byte_perm(pha, phb, 0x6420);
    }
    ([l[0], l[1], 0, 0], [h[0], h[1], 0, 0])
}

/// The E2M1 code of element `k` (0..32) of a padded block ([`e2m1_padded`]): the reading side.
pub fn e2m1_padded_code(block: &[u8], k: usize) -> u8 {
    let b = block[(k / 16) * 16 + (k % 16) / 2];
    if k.is_multiple_of(2) {
        b & 0x0f
    } else {
        b >> 4
    }
}

/// Index (u32 word) of the scale word of row / column `i` (0..128) in the 32 x 16-byte source
/// matrix of `tcgen05.cp.32x128b.warpx4`: row `i % 32`, word `i / 32`.
pub fn sf_word_index(i: usize) -> usize {
    (i % 32) * 4 + i / 32
}

/// One K chunk of one weight tile as the kernel stages it (`fp4t_stage_a`): rows
/// `row0..row0 + 128` (rows at or past `w.rows` zero, scale 127) and scale blocks
/// `kb0..kb0 + nk` (`nk <= 4`; the rest zero, scale 127) in the K-major layout, and the scale
/// words (byte `j` = block `kb0 + j`) in [`sf_word_index`] order.
pub fn stage_a(w: &Mxfp4Device, row0: usize, kb0: usize, nk: usize) -> (Vec<u8>, [u32; TILE_M]) {
    let mut a = vec![0u8; TILE_M * ROW_BYTES];
    let mut sf = [0u32; TILE_M];
    for m in 0..TILE_M {
        let mut word = 0x7f7f_7f7fu32;
        for j in 0..CHUNK_KB {
            if j < nk && row0 + m < w.rows {
                let blk = e2m1_padded(&w.block(row0 + m, kb0 + j));
                for (b, &v) in blk.iter().enumerate() {
                    a[kmajor_offset(m, 32 * j + b, KERNEL_LBO, KERNEL_SBO)] = v;
                }
                word =
                    (word & !(0xff << (8 * j))) | ((w.scale(row0 + m, kb0 + j) as u32) << (8 * j));
            }
        }
        sf[sf_word_index(m)] = word;
    }
    (a, sf)
}

/// The activation tile of the same chunk (`fp4t_stage_b`): slot `n` = MXFP8 row `rows[n]`
/// (`None`: zeros, scale 127), E4M3 bytes in the K-major layout, scale words for slots 0..32
/// and 127-filler for the unused slots 32..128 of the copy.
pub fn stage_b(
    act: &Mxfp8Rows,
    rows: &[Option<usize>; TILE_N],
    kb0: usize,
    nk: usize,
) -> (Vec<u8>, [u32; TILE_M]) {
    let mut b = vec![0u8; TILE_N * ROW_BYTES];
    let mut sf = [0x7f7f_7f7fu32; TILE_M];
    let nbk = act.k / 32;
    for (n, r) in rows.iter().enumerate() {
        let mut word = 0u32;
        for j in 0..CHUNK_KB {
            let mut e = 127u32;
            if let Some(r) = *r
                && j < nk
            {
                let src = r * act.k + (kb0 + j) * 32;
                for i in 0..32 {
                    b[kmajor_offset(n, 32 * j + i, KERNEL_LBO, KERNEL_SBO)] = act.q[src + i];
                }
                e = act.s[r * nbk + kb0 + j] as u32;
            }
            word |= e << (8 * j);
        }
        sf[sf_word_index(n)] = word;
    }
    (b, sf)
}

/// Tensor memory of one CTA as the model sees it: 128 lanes x `cols` 32-bit cells.
#[derive(Clone, Debug)]
pub struct Tmem {
    cells: Vec<u32>,
    cols: usize,
}

impl Tmem {
    /// Zeroed tensor memory of `cols` columns.
    pub fn new(cols: usize) -> Self {
        Tmem {
            cells: vec![0; 128 * cols],
            cols,
        }
    }
    /// The cell at (lane, column); `None` out of range.
    pub fn get(&self, lane: usize, col: usize) -> Option<u32> {
        (lane < 128 && col < self.cols).then(|| self.cells[lane * self.cols + col])
    }
    fn set(&mut self, lane: usize, col: usize, v: u32) -> Result<(), ModelError> {
        if lane >= 128 || col >= self.cols {
            return Err(ModelError::Descriptor(format!(
                "tensor memory ({lane}, {col}) outside 128 x {}",
                self.cols
            )));
        }
        self.cells[lane * self.cols + col] = v;
        Ok(())
    }
    fn cell(&self, lane: usize, col: usize) -> Result<u32, ModelError> {
        self.get(lane, col).ok_or_else(|| {
            ModelError::Descriptor(format!(
                "tensor memory ({lane}, {col}) outside 128 x {}",
                self.cols
            ))
        })
    }
}

fn smem_u32(smem: &[u8], at: usize) -> Result<u32, ModelError> {
    smem.get(at..at + 4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or_else(|| ModelError::Descriptor(format!("shared memory read at {at} out of range")))
}

fn smem_u8(smem: &[u8], at: usize) -> Result<u8, ModelError> {
    smem.get(at)
        .copied()
        .ok_or_else(|| ModelError::Descriptor(format!("shared memory read at {at} out of range")))
}

/// `tcgen05.cp.cta_group::1.32x128b.warpx4 [col], desc` on the model: row `l` (0..32) of the
/// 16-byte-wide source matrix (no swizzle: row `l` at `start + (l / 8) * sbo + (l % 8) * 16`)
/// goes to lane `l` of every 32-lane quarter, its four words to columns `col..col + 4`.
pub fn cp_32x128b_warpx4(
    smem: &[u8],
    desc: u64,
    tmem: &mut Tmem,
    col: usize,
) -> Result<(), ModelError> {
    let d = SmemDesc::decode(desc).map_err(ModelError::Descriptor)?;
    if d.swizzle != swizzle::NONE {
        return Err(ModelError::Descriptor(
            "the model copies unswizzled scales only".into(),
        ));
    }
    for l in 0..32 {
        let row = d.start as usize + (l / 8) * d.sbo as usize + (l % 8) * 16;
        for j in 0..4 {
            let v = smem_u32(smem, row + 4 * j)?;
            for q in 0..4 {
                tmem.set(32 * q + l, col + j, v)?;
            }
        }
    }
    Ok(())
}

/// `tcgen05.mma.cta_group::1.kind::mxf8f6f4.block_scale.scale_vec::1X [d], a, b, idesc,
/// [sfa], [sfb], accumulate` on the model, for the formats the kernel uses (A E2M1, B E4M3,
/// UE8M0 scales, both K-major without swizzle, dense):
/// `D[m][n] = (accumulate ? D[m][n] : 0) + sum_k A[m][k] SFA[m] B[k][n] SFB[n]` with
/// - `A[m][k]` from the padded E2M1 block of row `m` at `kmajor_offset(m, ·)` from `a`'s start,
///   `B[k][n]` the E4M3 byte `k` of row `n` of `b`;
/// - `SFA[m]` byte `sfa_id` of lane `m`, column `sfa + m / 32` (`SFB[n]`: lane `n`, column
///   `sfb + n / 32`, byte `sfb_id`): the replicated layout of [`cp_32x128b_warpx4`];
/// - `D[m][n]` the f32 in lane `m`, column `d + n` (data-path layout D, M = 128).
///
/// The sum is exact in f64 and rounded once to f32; hardware accumulates in f32 in some order.
#[allow(clippy::too_many_arguments)]
pub fn mma_block_scale(
    smem: &[u8],
    tmem: &mut Tmem,
    d: usize,
    a: u64,
    b: u64,
    idesc: u32,
    sfa: usize,
    sfb: usize,
    accumulate: bool,
) -> Result<(), ModelError> {
    let id = InstrDesc::decode(idesc).map_err(ModelError::Descriptor)?;
    let want = InstrDesc {
        sfa_id: id.sfa_id,
        sfb_id: id.sfb_id,
        m: id.m,
        n: id.n,
        ..InstrDesc::kernel()
    };
    if id != want || id.m != 128 || id.n == 0 || id.n > 256 || id.n % 16 != 0 {
        return Err(ModelError::Descriptor(format!(
            "the model runs E2M1 x E4M3, UE8M0, K-major, dense, M = 128, N in 16..=256: {id:?}"
        )));
    }
    let (ad, bd) = (
        SmemDesc::decode(a).map_err(ModelError::Descriptor)?,
        SmemDesc::decode(b).map_err(ModelError::Descriptor)?,
    );
    if ad.swizzle != swizzle::NONE || bd.swizzle != swizzle::NONE {
        return Err(ModelError::Descriptor(
            "the model reads unswizzled operands only".into(),
        ));
    }
    let at = |dsc: &SmemDesc, row: usize, kbyte: usize| {
        dsc.start as usize + kmajor_offset(row, kbyte, dsc.lbo as usize, dsc.sbo as usize)
    };
    let (m_dim, n_dim) = (id.m as usize, id.n as usize);
    let mut av = vec![[0f64; 32]; m_dim];
    for (m, row) in av.iter_mut().enumerate() {
        let sw = tmem.cell(m, sfa + m / 32)?;
        let s = ue8m0_value((sw >> (8 * id.sfa_id)) as u8)
            .ok_or_else(|| ModelError::Nan(format!("SFA row {m}")))?;
        let mut blk = [0u8; 32];
        for (kb, v) in blk.iter_mut().enumerate() {
            *v = smem_u8(smem, at(&ad, m, kb))?;
        }
        for (k, x) in row.iter_mut().enumerate() {
            *x = e2m1_value(e2m1_padded_code(&blk, k)) * s;
        }
    }
    let mut bv = vec![[0f64; 32]; n_dim];
    for (n, col) in bv.iter_mut().enumerate() {
        let sw = tmem.cell(n % 128, sfb + n / 32)?;
        let s = ue8m0_value((sw >> (8 * id.sfb_id)) as u8)
            .ok_or_else(|| ModelError::Nan(format!("SFB column {n}")))?;
        for (k, x) in col.iter_mut().enumerate() {
            let byte = smem_u8(smem, at(&bd, n, k))?;
            *x = e4m3_value(byte).ok_or_else(|| ModelError::Nan(format!("B[{k}][{n}]")))? * s;
        }
    }
    for (m, ar) in av.iter().enumerate() {
        for (n, bc) in bv.iter().enumerate() {
            let mut s = if accumulate {
                f32::from_bits(tmem.cell(m, d + n)?) as f64
            } else {
                0.0
            };
            for k in 0..32 {
                s += ar[k] * bc[k];
            }
            tmem.set(m, d + n, (s as f32).to_bits())?;
        }
    }
    Ok(())
}

/// The descriptors and layout constants a [`gemm_model`] run uses: the kernel's by default; the
/// tests perturb them to check that the model notices.
#[derive(Clone, Copy, Debug)]
pub struct Config {
    /// Instruction descriptor with zero scale ids.
    pub idesc: u32,
    /// Operand descriptor, start 0.
    pub operand: u64,
    /// Scale-source descriptor, start 0.
    pub scales: u64,
}

impl Config {
    /// What the kernel is compiled with ([`kernel_defines`]).
    pub fn kernel() -> Result<Self, String> {
        Ok(Config {
            idesc: InstrDesc::kernel().encode()?,
            operand: SmemDesc::kernel_operand().encode()?,
            scales: SmemDesc::kernel_scales().encode()?,
        })
    }
}

/// The `-D` options that give `fp4_tcgen05.cu` its descriptor constants.
pub fn kernel_defines() -> Result<Vec<String>, String> {
    let c = Config::kernel()?;
    Ok(vec![
        format!("-DFP4T_IDESC={:#010x}u", c.idesc),
        format!("-DFP4T_ADESC_HI={:#018x}ull", c.operand),
        format!("-DFP4T_BDESC_HI={:#018x}ull", c.operand),
        format!("-DFP4T_SFDESC_HI={:#018x}ull", c.scales),
    ])
}

// Where the model puts the staged tiles in its shared memory (16-byte aligned, like the
// kernel's struct: A tiles, B tile, SFA words, SFB words).
const SM_A: [usize; 2] = [0, TILE_M * ROW_BYTES];
const SM_B: usize = 2 * TILE_M * ROW_BYTES;
const SM_SFA: [usize; 2] = [SM_B + TILE_N * ROW_BYTES, SM_B + TILE_N * ROW_BYTES + 512];
const SM_SFB: usize = SM_SFA[1] + 512;
const SM_SIZE: usize = SM_SFB + 512;

fn write_words(smem: &mut [u8], at: usize, words: &[u32; TILE_M]) {
    for (i, w) in words.iter().enumerate() {
        smem[at + 4 * i..at + 4 * i + 4].copy_from_slice(&w.to_le_bytes());
    }
}

/// `out[c][r] = sum_k W[r][k] X[cols[c]][k]` the way `fp4_tcgen05.cu` computes it: 128-row x
/// 32-slot tiles, K in chunks of up to 4 scale blocks, each chunk staged by [`stage_a`] /
/// [`stage_b`], scales copied by [`cp_32x128b_warpx4`], one [`mma_block_scale`] per block with
/// the descriptors of `cfg` advanced as the kernel advances them (start + 256 bytes per block,
/// scale ids = the block's byte). Returns `[cols.len()][w.rows]`.
pub fn gemm_model(
    w: &Mxfp4Device,
    act: &Mxfp8Rows,
    cols: &[usize],
    cfg: &Config,
) -> Result<Vec<f32>, ModelError> {
    let k_ok = w.k == act.k && w.k.is_multiple_of(32) && w.k > 0;
    let w_ok = w.bytes.len() == w.rows * w.k / 32 * 17;
    let x_ok = act.q.len() == act.s.len() * 32
        && act.k > 0
        && cols.iter().all(|&c| (c + 1) * act.k <= act.q.len());
    if !(k_ok && w_ok && x_ok) {
        return Err(ModelError::Shape(format!(
            "tcgen05 gemm_model: weights {} x {} ({} bytes), activations of {} ({} bytes), columns {cols:?}",
            w.rows,
            w.k,
            w.bytes.len(),
            act.k,
            act.q.len()
        )));
    }
    let nbk = w.k / 32;
    let mut out = vec![0f32; cols.len() * w.rows];
    let mut smem = vec![0u8; SM_SIZE];
    for c0 in (0..cols.len()).step_by(TILE_N) {
        let rows: [Option<usize>; TILE_N] = std::array::from_fn(|i| cols.get(c0 + i).copied());
        for r0 in (0..w.rows).step_by(TILE_M) {
            let mut tmem = Tmem::new(TMEM_COLS);
            for kb0 in (0..nbk).step_by(CHUNK_KB) {
                let nk = CHUNK_KB.min(nbk - kb0);
                let (a, sfa) = stage_a(w, r0, kb0, nk);
                let (b, sfb) = stage_b(act, &rows, kb0, nk);
                smem[SM_A[0]..SM_A[0] + a.len()].copy_from_slice(&a);
                smem[SM_B..SM_B + b.len()].copy_from_slice(&b);
                write_words(&mut smem, SM_SFA[0], &sfa);
                write_words(&mut smem, SM_SFB, &sfb);
                let sd = |at: usize| SmemDesc::with_start(cfg.scales, at as u32);
                cp_32x128b_warpx4(&smem, sd(SM_SFB), &mut tmem, COL_SFB)?;
                cp_32x128b_warpx4(&smem, sd(SM_SFA[0]), &mut tmem, COL_SFA[0])?;
                for j in 0..nk {
                    let od = |at: usize| SmemDesc::with_start(cfg.operand, (at + 256 * j) as u32);
                    let idesc = cfg.idesc | ((j as u32) << 29) | ((j as u32) << 4);
                    mma_block_scale(
                        &smem,
                        &mut tmem,
                        COL_D[0],
                        od(SM_A[0]),
                        od(SM_B),
                        idesc,
                        COL_SFA[0],
                        COL_SFB,
                        (kb0 | j) != 0,
                    )?;
                }
            }
            for m in 0..TILE_M.min(w.rows - r0) {
                for n in 0..TILE_N.min(cols.len() - c0) {
                    out[(c0 + n) * w.rows + r0 + m] = f32::from_bits(tmem.cell(m, COL_D[0] + n)?);
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mask(width: u32) -> u64 {
        (1u64 << width) - 1
    }

    #[test]
    fn instruction_descriptor_fields_land_at_the_documented_bits_and_round_trip() {
        // The table itself: fields disjoint, reserved bits 3, 6 and 31 uncovered.
        let mut seen = 0u64;
        for f in IDESC_FIELDS {
            let m = mask(f.2) << f.1;
            assert_eq!(seen & m, 0, "{} overlaps", f.0);
            seen |= m;
        }
        assert_eq!(seen, 0x7fff_ffb7, "covered bits {seen:#x}");
        // Each field alone, at its largest value, encodes to exactly its bits.
        let zero = InstrDesc {
            sparsity_selector: 0,
            sparse: false,
            sfb_id: 0,
            atype: 0,
            btype: 0,
            negate_a: false,
            negate_b: false,
            transpose_a: false,
            transpose_b: false,
            n: 0,
            scale_ue8m0: false,
            m: 0,
            sfa_id: 0,
        };
        let cases: Vec<(&str, InstrDesc)> = vec![
            (
                "sparsity_selector",
                InstrDesc {
                    sparsity_selector: 3,
                    ..zero
                },
            ),
            (
                "sparsity",
                InstrDesc {
                    sparse: true,
                    ..zero
                },
            ),
            ("sfb_id", InstrDesc { sfb_id: 3, ..zero }),
            ("atype", InstrDesc { atype: 7, ..zero }),
            ("btype", InstrDesc { btype: 7, ..zero }),
            (
                "negate_a",
                InstrDesc {
                    negate_a: true,
                    ..zero
                },
            ),
            (
                "negate_b",
                InstrDesc {
                    negate_b: true,
                    ..zero
                },
            ),
            (
                "transpose_a",
                InstrDesc {
                    transpose_a: true,
                    ..zero
                },
            ),
            (
                "transpose_b",
                InstrDesc {
                    transpose_b: true,
                    ..zero
                },
            ),
            ("n_shr3", InstrDesc { n: 63 << 3, ..zero }),
            (
                "scale_type",
                InstrDesc {
                    scale_ue8m0: true,
                    ..zero
                },
            ),
            ("m_shr4", InstrDesc { m: 31 << 4, ..zero }),
            ("sfa_id", InstrDesc { sfa_id: 3, ..zero }),
        ];
        for (name, d) in cases {
            let (lo, width) = field(IDESC_FIELDS, name);
            let w = d.encode().unwrap();
            assert_eq!(w as u64, mask(width) << lo, "{name}");
            assert_eq!(InstrDesc::decode(w).unwrap(), d, "{name}");
        }
        // The PTX ISA's table, field by field, as literal bit positions.
        let k = InstrDesc::kernel();
        let w = k.encode().unwrap();
        assert_eq!((w >> 7) & 7, 5, "atype E2M1 at bits 7-9");
        assert_eq!((w >> 10) & 7, 0, "btype E4M3 at bits 10-12");
        assert_eq!((w >> 17) & 0x3f, 32 >> 3, "N >> 3 at bits 17-22");
        assert_eq!((w >> 23) & 1, 1, "UE8M0 scale type at bit 23");
        assert_eq!((w >> 24) & 0x1f, 128 >> 4, "M >> 4 at bits 24-28");
        assert_eq!(w, (5 << 7) | (4 << 17) | (1 << 23) | (8 << 24));
        assert_eq!(InstrDesc::decode(w).unwrap(), k);
        // Scale ids as the kernel ORs them in.
        let d = InstrDesc::decode(w | (2 << 29) | (3 << 4)).unwrap();
        assert_eq!((d.sfa_id, d.sfb_id), (2, 3));
        // Reserved bits and misfits are refused.
        for bit in [3u32, 6, 31] {
            assert!(InstrDesc::decode(w | (1 << bit)).is_err(), "bit {bit}");
        }
        assert!(InstrDesc { sfa_id: 4, ..k }.encode().is_err());
        assert!(InstrDesc { n: 12, ..k }.encode().is_err());
        assert!(InstrDesc { m: 1024, ..k }.encode().is_err());
    }

    #[test]
    fn smem_descriptor_fields_land_at_the_documented_bits_and_round_trip() {
        let d = SmemDesc {
            start: 0x3fff0,
            lbo: 0,
            sbo: 0,
            base_offset: 0,
            lbo_absolute: false,
            swizzle: 0,
        };
        assert_eq!(d.encode().unwrap(), 0x3fff | (1 << 46));
        let d2 = SmemDesc {
            start: 0,
            lbo: 0x3fff0,
            ..d
        };
        assert_eq!(d2.encode().unwrap(), (0x3fff << 16) | (1 << 46));
        let d3 = SmemDesc {
            start: 0,
            sbo: 0x3fff0,
            ..d
        };
        assert_eq!(d3.encode().unwrap(), (0x3fffu64 << 32) | (1 << 46));
        let d4 = SmemDesc {
            start: 0,
            base_offset: 7,
            ..d
        };
        assert_eq!(d4.encode().unwrap(), (7u64 << 49) | (1 << 46));
        let d5 = SmemDesc {
            start: 0,
            lbo_absolute: true,
            ..d
        };
        assert_eq!(d5.encode().unwrap(), (1u64 << 52) | (1 << 46));
        for (sw, bits) in [(1u8, 1u64), (2, 2), (4, 4), (6, 6)] {
            let e = SmemDesc {
                start: 0,
                swizzle: sw,
                ..d
            }
            .encode()
            .unwrap();
            assert_eq!(e, (bits << 61) | (1 << 46), "swizzle {sw}");
        }
        for sw in [3u8, 5, 7] {
            assert!(SmemDesc { swizzle: sw, ..d }.encode().is_err());
        }
        assert!(SmemDesc { start: 8, ..d }.encode().is_err(), "unaligned");
        assert!(SmemDesc { sbo: 1 << 18, ..d }.encode().is_err(), "too far");
        for x in [
            d,
            d2,
            d3,
            d4,
            d5,
            SmemDesc::kernel_operand(),
            SmemDesc::kernel_scales(),
        ] {
            assert_eq!(SmemDesc::decode(x.encode().unwrap()).unwrap(), x);
        }
        // The fixed 0b001 at bits 46-48 is required, bits 53-60 must be zero.
        let k = SmemDesc::kernel_operand().encode().unwrap();
        assert!(SmemDesc::decode(k & !(1 << 46)).is_err());
        assert!(SmemDesc::decode(k | (1 << 47)).is_err());
        assert!(SmemDesc::decode(k | (1 << 55)).is_err());
        assert!(SmemDesc::decode(k | (1 << 14)).is_err(), "reserved 14-15");
        // The kernel's constants and its start-address OR.
        assert_eq!(k, (8u64 << 16) | (64u64 << 32) | (1 << 46));
        let s = SmemDesc::kernel_scales().encode().unwrap();
        assert_eq!(s, (8u64 << 32) | (1 << 46));
        for addr in [0u32, 16, 0x1230, 0x3fff0, 0x5_0010] {
            let a = addr & 0x3fff0;
            let full = SmemDesc {
                start: a,
                ..SmemDesc::kernel_operand()
            }
            .encode()
            .unwrap();
            assert_eq!(SmemDesc::with_start(k, addr), full, "address {addr:#x}");
        }
    }

    #[test]
    fn kmajor_layout_is_a_bijection_onto_the_staged_tile() {
        for rows in [TILE_M, TILE_N] {
            let mut hit = vec![0u8; rows * ROW_BYTES];
            for r in 0..rows {
                for b in 0..ROW_BYTES {
                    hit[kmajor_offset(r, b, KERNEL_LBO, KERNEL_SBO)] += 1;
                }
            }
            assert!(hit.iter().all(|&h| h == 1), "{rows} rows");
        }
        // A core matrix is 8 rows of 16 contiguous bytes; K steps of 32 bytes are 256 bytes apart
        // (the kernel's descriptor advance).
        assert_eq!(kmajor_offset(3, 5, KERNEL_LBO, KERNEL_SBO), 3 * 16 + 5);
        assert_eq!(kmajor_offset(0, 32, KERNEL_LBO, KERNEL_SBO), 256);
        assert_eq!(kmajor_offset(8, 0, KERNEL_LBO, KERNEL_SBO), KERNEL_SBO);
        for r in 0..TILE_M {
            for j in 0..CHUNK_KB {
                for b in 0..32 {
                    assert_eq!(
                        kmajor_offset(r, 32 * j + b, KERNEL_LBO, KERNEL_SBO),
                        256 * j + kmajor_offset(r, b, KERNEL_LBO, KERNEL_SBO)
                    );
                }
            }
        }
    }

    #[test]
    fn e2m1_padding_keeps_every_code_and_zeroes_the_padding() {
        let mut seed = 0x0bad_5eed_u64;
        for _ in 0..200 {
            let qs: [u8; 16] = std::array::from_fn(|_| {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (seed >> 56) as u8
            });
            let p = e2m1_padded(&qs);
            for (j, &q) in qs.iter().enumerate() {
                assert_eq!(e2m1_padded_code(&p, j), q & 15, "element {j}");
                assert_eq!(e2m1_padded_code(&p, 16 + j), q >> 4, "element {}", 16 + j);
            }
            assert!(p[8..16].iter().chain(&p[24..32]).all(|&b| b == 0));
        }
        // The kernel's word-wise version (fp4t_pack_e2m1) gives the same bytes.
        for _ in 0..500 {
            let qs: [u8; 16] = std::array::from_fn(|_| {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (seed >> 56) as u8
            });
            let q: [u32; 4] = std::array::from_fn(|i| {
                u32::from_le_bytes([qs[4 * i], qs[4 * i + 1], qs[4 * i + 2], qs[4 * i + 3]])
            });
            let (lo, hi) = e2m1_padded_words(q);
            let bytes: Vec<u8> = lo.iter().chain(&hi).flat_map(|w| w.to_le_bytes()).collect();
            assert_eq!(bytes, e2m1_padded(&qs), "block {qs:02x?}");
        }
        assert_eq!(byte_perm(0x0302_0100, 0x0706_0504, 0x6420), 0x0604_0200);
        assert_eq!(byte_perm(0x0302_0100, 0x0706_0504, 0x7531), 0x0705_0301);
        // Elements in order, two to a byte, the even one low.
        let qs: [u8; 16] = std::array::from_fn(|j| (j as u8) | (((15 - j) as u8) << 4));
        let p = e2m1_padded(&qs);
        assert_eq!(&p[..8], &[0x10, 0x32, 0x54, 0x76, 0x98, 0xba, 0xdc, 0xfe]);
        assert_eq!(
            &p[16..24],
            &[0xef, 0xcd, 0xab, 0x89, 0x67, 0x45, 0x23, 0x01]
        );
    }

    #[test]
    fn scale_copy_puts_row_m_in_lane_m_column_m_over_32() {
        let words: [u32; 128] = std::array::from_fn(|i| 0x0101_0101u32.wrapping_mul(i as u32 + 1));
        let mut src = [0u32; 128];
        for (i, w) in words.iter().enumerate() {
            src[sf_word_index(i)] = *w;
        }
        let mut smem = vec![0u8; 512 + 64];
        write_words(&mut smem, 64, &src);
        let mut tmem = Tmem::new(8);
        let desc = SmemDesc::with_start(SmemDesc::kernel_scales().encode().unwrap(), 64);
        cp_32x128b_warpx4(&smem, desc, &mut tmem, 4).unwrap();
        for (m, w) in words.iter().enumerate() {
            assert_eq!(tmem.get(m, 4 + m / 32), Some(*w), "row {m}");
            // Replicated: every quarter's lane m % 32 holds it in the same column.
            for q in 0..4 {
                assert_eq!(tmem.get(32 * q + m % 32, 4 + m / 32), Some(*w));
            }
        }
    }
}
