#include "kern.h"
typedef void (*GuFn)(const float*, int, const u8*, i64, const u8*, i64, const u8*, int, const u8*, int, const int*, int, int, float*);
typedef void (*DnFn)(const float*, int, const u8*, i64, const u8*, int, const int*, const float*, int, int, float*);
static unsigned long long rng = 88172645463325252ull;
static unsigned rnd() { rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17; return (unsigned)rng; }
static float frand() { return (rnd() & 0xffffff) / 16777216.0f * 2 - 1; }
struct Mx { unsigned char* p; i64 nb; };
static Mx make_mx(int ne, int rows, int cols) {
    i64 nb = (i64)ne * rows * (cols / 32);
    size_t n = nb * 17, na = (n + 255) & ~(size_t)255;
    unsigned char* p = (unsigned char*)aligned_alloc(256, na);
    for (i64 i = 0; i < nb * 16; ++i) p[i] = rnd();
    for (i64 i = 0; i < nb; ++i) p[nb * 16 + i] = 119 + rnd() % 6;
    g_allocs.push_back({p, n});
    return {p, nb};
}
static double wval(const Mx& m, i64 row, int nbk, int c) {
    i64 b = row * nbk + c / 32;
    int j = c % 32;
    unsigned byte = m.p[b * 16 + (j & 15)];
    unsigned nib = j < 16 ? byte & 15 : byte >> 4;
    static const double t[8] = {0, .5, 1, 1.5, 2, 3, 4, 6};
    return t[nib & 7] * (nib & 8 ? -1 : 1) * ldexp(1.0, (int)m.p[m.nb * 16 + b] - 127);
}
static double swiglu_d(double g, double u) {
    g = std::min(g, 7.0);
    u = std::min(std::max(u, -7.0), 7.0);
    return g / (1 + exp(-1.702 * g)) * (u + 1);
}
static std::vector<float> rvec(size_t n, float sc) {
    std::vector<float> v(n);
    for (auto& x : v) x = ((rnd() >> 24) == 7 ? 8.f : 1.f) * frand() * sc;
    return v;
}
template <class F, class... A>
static void emu_launch(F f, unsigned gx, unsigned bx, size_t smem, A... args) {
    std::vector<unsigned char> buf(smem + 512);
    unsigned char* base = (unsigned char*)(((uintptr_t)buf.data() + 255) & ~(uintptr_t)255);
    g_smem = base;
    g_smem_n = smem;
    for (unsigned x = 0; x < gx; ++x) {
        memset(base, 0xff, smem);
        g_bars.clear();
        std::barrier<> bb(bx);
        g_block_bar = &bb;
        std::vector<std::barrier<>*> wb;
        for (unsigned w = 0; w < bx / 32; ++w) g_warp_bar[w] = new std::barrier<>(32);
        std::vector<std::thread> th;
        for (unsigned t = 0; t < bx; ++t)
            th.emplace_back([=] {
                threadIdx = {t, 0, 0};
                blockIdx = {x, 0, 0};
                gridDim = {gx, 1, 1};
                blockDim = {bx, 1, 1};
                f(args...);
            });
        for (auto& t : th) t.join();
        for (unsigned w = 0; w < bx / 32; ++w) delete g_warp_bar[w];
    }
}
static size_t part_bytes(int R, int nbk) { return (size_t)R * nbk * 16 + ((R * nbk + 15) & ~15) + 16; }
static size_t q3_bytes(int n) { return ((size_t)3 * n + (n / 32) * 4 + 15) & ~(size_t)15; }
const int NE = 6, KK = 4;
static int fails = 0;
static void report(const char* what, const char* name, double num, double den, double maxe, int bad) {
    double e = den > 0 ? num / den : num;
    bool ok = bad == 0 && e < 1e-11 && std::isfinite(e);
    if (!ok) ++fails;
    printf("%-8s %-26s nmse %.2e maxabs %.2e untouched-violations %d bulk %ld B %s\n", what, name, e, maxe, bad,
           g_bulk_bytes, ok ? "OK" : "FAIL");
}
static void test_gu(const char* name, GuFn f, int kind, int R, int S, int block, int G, int dm, int nff,
                    std::vector<int> ids) {
    int nbk = dm / 32;
    Mx wg = make_mx(NE, nff, dm), wu = make_mx(NE, nff, dm);
    auto bg = rvec(NE * nff, .5f), bu = rvec(NE * nff, .5f), x = rvec(dm, 1.f);
    std::vector<float> h(KK * nff, 12345.f);
    size_t smem = kind == 1 ? dm * 4 : (kind == 3 ? q3_bytes(dm) : (size_t)dm * 4) + (size_t)S * 2 * part_bytes(R, nbk);
    g_bulk_bytes = 0;
    emu_launch(f, G, block, smem, (const float*)x.data(), dm, (const u8*)wg.p, wg.nb, (const u8*)wu.p, wu.nb,
               (const u8*)bg.data(), 0, (const u8*)bu.data(), 0, (const int*)ids.data(), KK, nff, h.data());
    double num = 0, den = 0, maxe = 0;
    int bad = 0;
    for (int p = 0; p < KK; ++p) {
        int e = ids[p];
        for (int r = 0; r < nff; ++r) {
            float got = h[p * nff + r];
            if (e < 0) { bad += got != 12345.f; continue; }
            double g = 0, u = 0;
            i64 row = (i64)e * nff + r;
            for (int c = 0; c < dm; ++c) {
                g += wval(wg, row, nbk, c) * x[c];
                u += wval(wu, row, nbk, c) * x[c];
            }
            double ref = swiglu_d(g + bg[row], u + bu[row]);
            num += (got - ref) * (got - ref);
            den += ref * ref;
            maxe = std::max(maxe, fabs(got - ref));
        }
    }
    report("gate_up", name, num, den, maxe, bad);
}
static void test_down(const char* name, DnFn f, int kind, int R, int S, int block, int G, int nff, int dm,
                      std::vector<int> ids) {
    int nbk = nff / 32;
    Mx wd = make_mx(NE, dm, nff);
    auto bd = rvec(NE * dm, .5f), hin = rvec(KK * nff, 2.f);
    std::vector<float> wts = {0.1f, 0.3f, 0.5f, 0.7f};
    for (int j = 0; j < KK; ++j)
        if (ids[j] < 0)
            for (int c = 0; c < nff; ++c) hin[j * nff + c] = NAN;  // must never be used
    std::vector<float> y(dm, 12345.f);
    size_t smem = kind == 1 ? (size_t)KK * nff * 4
                            : KK * (kind == 3 ? q3_bytes(nff) : (size_t)nff * 4) + (size_t)S * KK * part_bytes(R, nbk);
    g_bulk_bytes = 0;
    emu_launch(f, G, block, smem, (const float*)hin.data(), nff, (const u8*)wd.p, wd.nb, (const u8*)bd.data(), 0,
               (const int*)ids.data(), (const float*)wts.data(), KK, dm, y.data());
    double num = 0, den = 0, maxe = 0;
    int bad = 0;
    for (int d = 0; d < dm; ++d) {
        double ref = 0;
        for (int j = 0; j < KK; ++j) {
            int e = ids[j];
            if (e < 0) continue;
            i64 row = (i64)e * dm + d;
            double a = 0;
            for (int c = 0; c < nff; ++c) a += wval(wd, row, nbk, c) * hin[j * nff + c];
            ref += wts[j] * (a + bd[row]);
        }
        float got = y[d];
        bad += got == 12345.f;
        num += (got - ref) * (got - ref);
        den += ref * ref;
        maxe = std::max(maxe, fabs(got - ref));
    }
    report("down", name, num, den, maxe, bad);
}
int main() {
    std::vector<std::vector<int>> idsets = {{3, 1, 0, 5}, {3, -1, 0, 5}};
    for (auto& ids : idsets) {
        printf("ids %d %d %d %d\n", ids[0], ids[1], ids[2], ids[3]);
        test_gu("pers", moe_gate_up_pers, 1, 0, 0, 256, 5, 2880, 100, ids);
        test_gu("pers_l2 dm3200", moe_gate_up_pers_l2, 1, 0, 0, 256, 3, 3200, 40, ids);
        test_gu("bulk_r8_s4", moe_gate_up_bulk_r8_s4, 2, 8, 4, 256, 5, 2880, 100, ids);
        test_gu("bulk_r8_s6", moe_gate_up_bulk_r8_s6, 2, 8, 6, 256, 3, 2880, 100, ids);
        test_gu("bulk_r8_s8", moe_gate_up_bulk_r8_s8, 2, 8, 8, 256, 2, 2880, 100, ids);
        test_gu("bulk_r16_s4 b512", moe_gate_up_bulk_r16_s4, 2, 16, 4, 512, 3, 2880, 100, ids);
        test_gu("bulk_r16_s4 b256", moe_gate_up_bulk_r16_s4, 2, 16, 4, 256, 3, 2880, 100, ids);
        test_gu("bulk_q3_r8_s6", moe_gate_up_bulk_q3_r8_s6, 3, 8, 6, 256, 3, 2880, 100, ids);
        test_gu("bulk_q3_r16_s4 b512", moe_gate_up_bulk_q3_r16_s4, 3, 16, 4, 512, 3, 2880, 100, ids);
        test_down("pers_s1", moe_down_pers_s1, 1, 0, 0, 256, 3, 2880, 100, ids);
        test_down("pers_s2", moe_down_pers_s2, 1, 0, 0, 256, 3, 2880, 100, ids);
        test_down("pers_s2_l2 nff3200", moe_down_pers_s2_l2, 1, 0, 0, 256, 2, 3200, 50, ids);
        test_down("bulk_r2_s6", moe_down_bulk_r2_s6, 2, 2, 6, 256, 5, 2880, 100, ids);
        test_down("bulk_r2_s8", moe_down_bulk_r2_s8, 2, 2, 8, 256, 3, 2880, 100, ids);
        test_down("bulk_r4_s4", moe_down_bulk_r4_s4, 2, 4, 4, 256, 3, 2880, 100, ids);
        test_down("bulk_r4_s4 b512", moe_down_bulk_r4_s4, 2, 4, 4, 512, 3, 2880, 100, ids);
        test_down("bulk_r8_s3 dm99", moe_down_bulk_r8_s3, 2, 8, 3, 256, 3, 2880, 99, ids);
        test_down("bulk_q3_r2_s8", moe_down_bulk_q3_r2_s8, 3, 2, 8, 256, 3, 2880, 100, ids);
        test_down("bulk_q3_r4_s4 b512", moe_down_bulk_q3_r4_s4, 3, 4, 4, 512, 3, 2880, 100, ids);
    }
    printf("%s (%d failures)\n", fails ? "FAILED" : "ALL OK", fails);
    return fails != 0;
}
