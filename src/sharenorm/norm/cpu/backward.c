/* The backward of a normalization + activation in two fused passes, for the CPU.
 *
 * From the one tensor saved for backward (s: the output y of an invertible activation, or
 * the input x) and the incoming gradient g, each element gives on the fly
 *
 *     dz = dL/dz (the gradient at the pre-activation z)   and   u (y's preimage z, or x),
 *
 * with nothing full-size materialized:
 *
 *     pass 1:  S1[n,c] = Σ dz,  S2[n,c] = Σ dz·u   over the positions of (n, c), in double
 *     then     the per-(n, c) coefficients of each statistic (see norm_backward in
 *              __init__.py for the math)
 *     pass 2:  dx = c1[n,c]·dz + c2[n,c]·u + c3[n,c]
 *
 * Kinds (how dz and u come from s and g; p is the activation's parameter (param), here the
 * leaky_relu slope; a, b the per-(n, c)
 * affine map z = a·x + b = γ·r·(x − μ) + β of a recomputed pre-activation):
 *     ident      dz = g,                          u = s      (identity: s is y = z, or x)
 *     inv_leaky  dz = s > 0 ? g : p·g,            u = s > 0 ? s : s/p   (s = leaky_relu(z))
 *     rec_relu   dz = z > 0 ? g : 0,              u = s      (s = x)
 *     rec_leaky  dz = z > 0 ? g : p·g,            u = s      (s = x)
 * A NaN z gives dz = g for relu and elu (the test is z ≤ 0), p·g for leaky_relu (z > 0):
 * ATen's threshold, elu and leaky_relu backwards.
 *
 * Layouts:
 *   nchw (contiguous): fused_nchw_* takes one statistic at a time, both passes back to back
 *     (its rows are still in the cache for the second); the threads share the statistics.
 *   nhwc (channels-last): a statistic's elements are spread over the whole tensor, so the
 *     passes are separate calls: sums_nhwc_* (each thread takes a range of positions
 *     q = n·HW + i and adds into its own (N, C) sums), coefs_* (all statistics), apply_nhwc_*.
 *
 * C99 with OpenMP: the loops vectorize with -O3 (omp simd); `omp parallel` runs on
 * `nthreads` threads of the process's libgomp, which is torch's own (same soname, loaded
 * first), so the team is the one ATen's kernels use and no second pool spins beside it.
 * Compiled without OpenMP the pragmas are ignored and everything runs on one thread.
 */
#include <stdint.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define BODIES(T, SUF)                                                                     \
static inline void ident_##SUF(T s, T g, T a, T b, T p, T ip, T *dz, T *u) {               \
    (void)a; (void)b; (void)p; (void)ip; *dz = g; *u = s;                                   \
}                                                                                           \
static inline void inv_leaky_##SUF(T s, T g, T a, T b, T p, T ip, T *dz, T *u) {           \
    (void)a; (void)b; *dz = s > 0 ? g : g * p; *u = s > 0 ? s : s * ip;                     \
}                                                                                           \
static inline void rec_relu_##SUF(T s, T g, T a, T b, T p, T ip, T *dz, T *u) {            \
    (void)p; (void)ip; T z = a * s + b; *dz = z <= 0 ? (T)0 : g; *u = s;                    \
}                                                                                           \
static inline void rec_leaky_##SUF(T s, T g, T a, T b, T p, T ip, T *dz, T *u) {           \
    (void)ip; T z = a * s + b; *dz = z > 0 ? g : g * p; *u = s;                             \
}

/* float32 exp and log1p that vectorize (libm's do not without -ffast-math): Cephes' expf
 * and logf polynomials (≤ 2 ulp). NaN in, NaN out; exp clamps its argument to [−87.34, 88.38] (a result
 * between 1.2e-38 and 2.4e38: at the ends the activations' gradients are 0 or 1 anyway). */
static inline float exp_f32(float x) {
    /* NaN passes both clamps (its comparisons are false) and the arithmetic below */
    x = x > 88.3762626647949f ? 88.3762626647949f : x;
    x = x < -87.3365447504019f ? -87.3365447504019f : x;
    /* k = round(x·log2 e) by the 1.5·2^23 trick: kb's low mantissa bits hold k + 2^22 */
    const float magic = 12582912.0f;
    const float kb = x * 1.44269504088896341f + magic;
    const float k = kb - magic;
    float r = x - k * 0.693359375f;
    r = r - k * -2.12194440e-4f;
    float q = 1.9875691500e-4f;
    q = q * r + 1.3981999507e-3f;
    q = q * r + 8.3334519073e-3f;
    q = q * r + 4.1665795894e-2f;
    q = q * r + 1.6666665459e-1f;
    q = q * r + 5.0000001201e-1f;
    q = q * r * r + r + 1.0f;
    uint32_t bits;
    memcpy(&bits, &kb, sizeof bits);
    bits = (bits - 0x4b400000u + 127u) << 23;  /* 2^k as a float: exponent field k + 127 */
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return q * scale;
}

static inline float log1p_f32(float v) {  /* v > −1 */
    const float u = 1.0f + v;
    uint32_t bits;
    memcpy(&bits, &u, sizeof bits);
    int32_t e = (int32_t)((bits >> 23) & 0xff) - 126;
    bits = (bits & 0x007fffffu) | 0x3f000000u;  /* u = m·2^e, m in [0.5, 1) */
    float m;
    memcpy(&m, &bits, sizeof m);
    const int32_t low = m < 0.707106781186547524f;
    e -= low;
    m = low ? m + m - 1.0f : m - 1.0f;
    const float z = m * m;
    float y = 7.0376836292e-2f;
    y = y * m - 1.1514610310e-1f;
    y = y * m + 1.1676998740e-1f;
    y = y * m - 1.2420140846e-1f;
    y = y * m + 1.4249322787e-1f;
    y = y * m - 1.6668057665e-1f;
    y = y * m + 2.0000714765e-1f;
    y = y * m - 2.4999993993e-1f;
    y = y * m + 3.3333331174e-1f;
    y = y * m * z;
    const float fe = (float)e;
    y += -2.12194440e-4f * fe;
    y += -0.5f * z;
    /* log(u), plus the rounding of 1 + v: log1p(v) = log(u) + (v − (u − 1))/u */
    return m + y + 0.693359375f * fe + (v - (u - 1.0f)) / u;
}

/* The float32-only kinds (p is elu's α):
 *     rec_silu     dz = g·σ(z)·(1 + z·(1 − σ(z)))       rec_sigmoid  dz = g·σ(z)·(1 − σ(z))
 *     (with 1 − σ(z) = e^(−z)·σ(z), which keeps its relative precision where σ → 1)
 *     rec_tanh     dz = g·(1 − tanh²z)                   rec_gelu     dz = g·(Φ(z) + z·φ(z))
 *     rec_elu      dz = z > 0 ? g : g·α·eᶻ               (u = s = x for all of these)
 *     inv_elu      dz = s > 0 ? g : g·(s + α),  u = s > 0 ? s : log1p(s/α)   (s = elu(z)) */
static inline void rec_silu_f32(float s, float g, float a, float b, float p, float ip,
                                float *dz, float *u) {
    (void)p; (void)ip;
    const float z = a * s + b, e = exp_f32(-z), sg = 1.0f / (1.0f + e);
    *dz = g * sg * (1.0f + z * (e * sg));  /* 1 − σ = e·σ, without cancellation */
    *u = s;
}
static inline void rec_sigmoid_f32(float s, float g, float a, float b, float p, float ip,
                                   float *dz, float *u) {
    (void)p; (void)ip;
    const float e = exp_f32(-(a * s + b)), sg = 1.0f / (1.0f + e);
    *dz = g * (e * sg) * sg;
    *u = s;
}
static inline void rec_tanh_f32(float s, float g, float a, float b, float p, float ip,
                                float *dz, float *u) {
    (void)p; (void)ip;
    /* 1 − tanh²z = 4·σ(2z)·(1 − σ(2z)) = 4·e·σ², e = e^(−2z): no cancellation near ±1 */
    const float e = exp_f32(-2.0f * (a * s + b)), sg = 1.0f / (1.0f + e);
    *dz = g * 4.0f * (e * sg) * sg;
    *u = s;
}
static inline void rec_gelu_f32(float s, float g, float a, float b, float p, float ip,
                                float *dz, float *u) {
    (void)p; (void)ip;
    /* Φ(z) from erfc(|z|/√2) = poly(t)·e^(−z²/2) (Abramowitz & Stegun 7.1.26, absolute
     * error ≤ 1.5e-7), whose exponential is also φ's: one exp and one division */
    const float z = a * s + b, w = (z < 0 ? -z : z) * 0.70710678118654752f;
    const float t = 1.0f / (1.0f + 0.3275911f * w);
    const float e = exp_f32(-w * w);
    float q = 1.061405429f;
    q = q * t - 1.453152027f;
    q = q * t + 1.421413741f;
    q = q * t - 0.284496736f;
    q = q * t + 0.254829592f;
    const float half_erfc = 0.5f * q * t * e;
    const float cdf = z >= 0 ? 1.0f - half_erfc : half_erfc;
    *dz = g * (cdf + z * (0.39894228040143268f * e));
    *u = s;
}
static inline void rec_elu_f32(float s, float g, float a, float b, float p, float ip,
                               float *dz, float *u) {
    (void)ip;
    const float z = a * s + b;
    *dz = z <= 0 ? g * p * exp_f32(z) : g;
    *u = s;
}
static inline void inv_elu_f32(float s, float g, float a, float b, float p, float ip,
                               float *dz, float *u) {
    (void)a; (void)b;
    *dz = s <= 0 ? g * (s + p) : g;
    *u = s <= 0 ? log1p_f32(s * ip) : s;
}

#ifdef _OPENMP
#define THREAD_ID(t, nt) do { t = omp_get_thread_num(); nt = omp_get_num_threads(); } while (0)
#else
#define THREAD_ID(t, nt) do { t = 0; nt = 1; } while (0)
#endif

/* The threads an `omp parallel` would start (torch.set_num_threads sets it, when the
 * runtime is shared), 1 without OpenMP. */
int max_threads(void) {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

/* What pass 2 starts from. A cheap kind recomputes dz and u from s and g; an expensive one
 * (float32 exp or log1p) keeps one of them in dx during pass 1 (dx is written over
 * in pass 2; on nchw its rows are still in the cache) and computes only the other. */
#define RECOMPUTES(T, SUF, KIND)                                                            \
enum { KIND##_keeps_##SUF = 0 };                                                            \
static inline T KIND##_keep_##SUF(T dz, T u) { (void)u; return dz; }                        \
static inline void KIND##_reload_##SUF(T s, T g, T kept, T a, T b, T p, T ip, T *dz, T *u) { \
    (void)kept; KIND##_##SUF(s, g, a, b, p, ip, dz, u);                                     \
}
#define KEEPS_DZ(KIND)  /* u = s = x: dz is the expensive one */                            \
enum { KIND##_keeps_f32 = 1 };                                                              \
static inline float KIND##_keep_f32(float dz, float u) { (void)u; return dz; }              \
static inline void KIND##_reload_f32(float s, float g, float kept, float a, float b,        \
                                     float p, float ip, float *dz, float *u) {              \
    (void)g; (void)a; (void)b; (void)p; (void)ip; *dz = kept; *u = s;                        \
}
KEEPS_DZ(rec_silu)
KEEPS_DZ(rec_sigmoid)
KEEPS_DZ(rec_tanh)
KEEPS_DZ(rec_gelu)
KEEPS_DZ(rec_elu)
/* inv_elu keeps u = log1p(s/α) and recomputes its cheap dz */
enum { inv_elu_keeps_f32 = 1 };
static inline float inv_elu_keep_f32(float dz, float u) { (void)dz; return u; }
static inline void inv_elu_reload_f32(float s, float g, float kept, float a, float b, float p,
                                      float ip, float *dz, float *u) {
    (void)a; (void)b; (void)ip; *dz = s <= 0 ? g * (s + p) : g; *u = kept;
}

/* The nhwc passes. a and b, (N, C), are read by the rec_ kinds only but always valid; dx
 * holds what a keeping kind kept between the two. */
#define KERNELS(T, SUF, KIND)                                                               \
void sums_nhwc_##KIND##_##SUF(const T *s, const T *g, const T *a, const T *b, T *dx,       \
                              int64_t n, int64_t hw, int64_t c, double param, int nthreads, \
                              double *acc) {                                                \
    /* acc: nthreads × (S1, S2) × (N, C), zeroed; thread t adds into its own block */       \
    const T p = (T)param, ip = (T)(1.0 / param);                                            \
    (void)nthreads;  /* read by the pragma only */                                          \
    _Pragma("omp parallel num_threads(nthreads)")                                           \
    {                                                                                       \
        int t = 0, nt = 1;                                                                  \
        THREAD_ID(t, nt);                                                                   \
        const int64_t total = n * hw, q0 = total * t / nt, q1 = total * (t + 1) / nt;       \
        double *s1 = acc + (int64_t)t * 2 * n * c, *s2 = s1 + n * c;                        \
        for (int64_t q = q0; q < q1; q++) {                                                 \
            const int64_t nc = (q / hw) * c;                                                \
            const T *sq = s + q * c, *gq = g + q * c;                                       \
            T *dq = KIND##_keeps_##SUF ? dx + q * c : (T *)0;                               \
            double *t1 = s1 + nc, *t2 = s2 + nc;                                            \
            _Pragma("omp simd")                                                             \
            for (int64_t k = 0; k < c; k++) {                                               \
                T dz, u;                                                                    \
                KIND##_##SUF(sq[k], gq[k], a[nc + k], b[nc + k], p, ip, &dz, &u);           \
                if (KIND##_keeps_##SUF) dq[k] = KIND##_keep_##SUF(dz, u);                   \
                t1[k] += dz;                                                                \
                t2[k] += (double)(dz * u);                                                  \
            }                                                                               \
        }                                                                                   \
    }                                                                                       \
}                                                                                           \
void apply_nhwc_##KIND##_##SUF(const T *s, const T *g, const T *a, const T *b,             \
                               const T *c1, const T *c2, const T *c3, T *dx, int64_t n,     \
                               int64_t hw, int64_t c, double param, int nthreads,           \
                               int fixed) {                                                 \
    const T p = (T)param, ip = (T)(1.0 / param);                                            \
    (void)nthreads;                                                                         \
    _Pragma("omp parallel for num_threads(nthreads) schedule(static)")                      \
    for (int64_t q = 0; q < n * hw; q++) {                                                  \
        const int64_t nc = (q / hw) * c;                                                    \
        const T *sq = s + q * c, *gq = g + q * c;                                           \
        T *dq = dx + q * c;                                                                 \
        _Pragma("omp simd")                                                                 \
        for (int64_t k = 0; k < c; k++) {                                                   \
            T dz, u;                                                                        \
            KIND##_reload_##SUF(sq[k], gq[k], dq[k], a[nc + k], b[nc + k], p, ip, &dz, &u); \
            /* fixed: c2 = c3 = 0, and no u term (0·u is NaN where u is ±inf or NaN) */     \
            dq[k] = fixed ? c1[nc + k] * dz : c1[nc + k] * dz + c2[nc + k] * u + c3[nc + k]; \
        }                                                                                   \
    }                                                                                       \
}

typedef struct { double gamma, rstd, alpha, delta; } xhat_map;

/* x̂ = α·u + δ for channel k of statistic st (with its γ and r): u is z when inverting
 * (α = 1/γ, δ = −β/γ), else x (α = r, δ = −r·μ). */
#define XHAT(T, SUF)                                                                        \
static inline xhat_map xhat_##SUF(const T *gamma, const T *beta, const T *r, const T *mu,   \
                                  int invert, int64_t k, int64_t st) {                      \
    xhat_map m;                                                                             \
    const double be = beta ? (double)beta[k] : 0.0;                                         \
    m.gamma = gamma ? (double)gamma[k] : 1.0;                                               \
    m.rstd = r[st];                                                                         \
    m.alpha = invert ? 1.0 / m.gamma : m.rstd;                                              \
    m.delta = invert ? -be / m.gamma : -m.rstd * (double)mu[st];                            \
    return m;                                                                               \
}

/* Both passes for one statistic after the other, NCHW: the statistic's rows are still in
 * the cache (L2) when the second pass reads them again, so memory sees s and g once.
 * Statistic st of sn per sample (sn = 0: BatchNorm, one per channel over every sample)
 * holds rows n·C + first + t for t < cpg (sn > 0: n = st / sn, first = (st % sn)·cpg),
 * or rows t·C + st for t < N (sn = 0). Writes s1 = Σ dz and p = Σ dz·x̂ per row (double
 * scratch), dγ and dβ (each unless NULL), and dx unless it is NULL. Returns 0 where a coefficient is not
 * finite. */
#define FUSED(T, SUF, KIND)                                                                 \
int fused_nchw_##KIND##_##SUF(const T *s, const T *g, T *dx, int64_t n, int64_t c,          \
        int64_t hw, int64_t sn, int64_t cpg, int64_t nstats, double count, int nthreads,    \
        const T *gamma, const T *beta, const T *r, const T *mu, int invert, int fixed,      \
        double param, double *s1, double *pp, T *dgamma, T *dbeta) {                        \
    const T p = (T)param, ip = (T)(1.0 / param);                                            \
    const int64_t nrows = sn ? cpg : n;                                                     \
    int finite = 1;                                                                         \
    (void)nthreads;                                                                         \
    _Pragma("omp parallel for num_threads(nthreads) schedule(static) reduction(&:finite)")  \
    for (int64_t st = 0; st < nstats; st++) {                                               \
        const double rr = r[st], m = invert ? 0.0 : (double)mu[st];                         \
        double ga = 0, gb = 0;                                                              \
        for (int pass = 0; pass < 2; pass++) {                                              \
            const double big_a = fixed ? 0.0 : ga / count, big_b = fixed ? 0.0 : gb / count;\
            if (pass == 1 && !dx) break;                                                    \
            for (int64_t t = 0; t < nrows; t++) {                                           \
                const int64_t row = sn ? (st / sn) * c + (st % sn) * cpg + t : t * c + st;  \
                const int64_t ch = row % c;                                                 \
                const xhat_map xm = xhat_##SUF(gamma, beta, r, mu, invert, ch, st);         \
                const double gm = xm.gamma, al = xm.alpha, de = xm.delta;                   \
                const T ar = (T)(gm * rr), br = (T)((beta ? (double)beta[ch] : 0.0) - m * gm * rr);\
                const T *sr = s + row * hw, *gr = g + row * hw;                             \
                T *dr = dx ? dx + row * hw : (T *)0;                                        \
                if (pass == 0) {                                                            \
                    double acc1 = 0, acc2 = 0;                                              \
                    _Pragma("omp simd reduction(+:acc1,acc2)")                              \
                    for (int64_t i = 0; i < hw; i++) {                                      \
                        T dz, u;                                                            \
                        KIND##_##SUF(sr[i], gr[i], ar, br, p, ip, &dz, &u);                 \
                        if (KIND##_keeps_##SUF) dr[i] = KIND##_keep_##SUF(dz, u);           \
                        acc1 += dz;                                                         \
                        acc2 += (double)(dz * u);                                           \
                    }                                                                       \
                    const double pr = al * acc2 + de * acc1;                                \
                    s1[row] = acc1;                                                         \
                    pp[row] = pr;                                                           \
                    ga += gm * acc1;                                                        \
                    gb += gm * pr;                                                          \
                } else {                                                                    \
                    const T k1 = (T)(rr * gm), k2 = (T)(-rr * big_b * al);                  \
                    const T k3 = (T)(-rr * (big_a + big_b * de));                           \
                    finite &= (k1 - k1 == 0) & (k2 - k2 == 0) & (k3 - k3 == 0);             \
                    _Pragma("omp simd")                                                     \
                    for (int64_t i = 0; i < hw; i++) {                                      \
                        T dz, u;                                                            \
                        KIND##_reload_##SUF(sr[i], gr[i], dr[i], ar, br, p, ip, &dz, &u);   \
                        /* fixed: k2 = k3 = 0, and no u term (0·u is NaN at u = ±inf, NaN) */ \
                        dr[i] = fixed ? k1 * dz : k1 * dz + k2 * u + k3;                    \
                    }                                                                       \
                }                                                                           \
            }                                                                               \
        }                                                                                   \
    }                                                                                       \
    for (int64_t k = 0; k < c; k++) {  /* dγ = Σ_n P, dβ = Σ_n S1 */                        \
        double sp = 0, sb = 0;                                                              \
        for (int64_t i = 0; i < n; i++) {                                                   \
            sp += pp[i * c + k];                                                            \
            sb += s1[i * c + k];                                                            \
        }                                                                                   \
        if (dgamma) dgamma[k] = (T)sp;                                                      \
        if (dbeta) dbeta[k] = (T)sb;                                                        \
    }                                                                                       \
    return finite;                                                                          \
}

/* Whether every |γ_k| ≥ tiny and |β_k| ≤ ratio·|γ_k|·s_k (NULL: γ = 1, β = 0): the affine
 * step is safe to invert (fused.py's _affine_invertible, on the CPU in one call). s_k is the
 * smallest spread σ·r = √(1 − ε·r²) of x̂ among channel k's statistics (statistic of (i, k):
 * i·sn + k/cpg, i < n; r NULL: s_k = 1): recovering x̂ = (z − β)/γ costs u·|β/γ| absolutely,
 * which is small against x̂ only while x̂ is not much smaller than 1 (σ² ≪ ε makes it so). */
#define AFFINE(T, SUF)                                                                      \
int affine_invertible_##SUF(const T *gamma, const T *beta, const T *r, int64_t n, int64_t c, \
                            int64_t sn, int64_t cpg, double eps, double tiny, double ratio) { \
    int ok = 1;                                                                             \
    for (int64_t k = 0; k < c; k++) {                                                       \
        const double g = gamma ? (gamma[k] < 0 ? -(double)gamma[k] : (double)gamma[k]) : 1; \
        const double be = beta ? (beta[k] < 0 ? -(double)beta[k] : (double)beta[k]) : 0;  \
        double spread2 = 1; /* min over the statistics of (σ·r)², a NaN one skipped */     \
        for (int64_t i = 0; r && i < n; i++) {                                              \
            const double ri = (double)r[i * sn + k / cpg];                                  \
            const double v = 1 - eps * ri * ri;                                             \
            if (v < spread2) spread2 = v < 0 ? 0 : v;                                       \
        }                                                                                   \
        const double lim = ratio * g;                                                       \
        ok &= (g >= tiny) & (be <= lim) & (be * be <= lim * lim * spread2);                 \
    }                                                                                       \
    return ok;                                                                              \
}

/* max_i |mean_i|·rstd_i, NaN entries skipped: how far the statistics of a norm may have
 * cancelled (_group_stats.needs_shift), in one call instead of four small torch ops. */
#define RATIO(T, SUF)                                                                       \
double max_ratio_##SUF(const T *mean, const T *rstd, int64_t n) {                           \
    double m = 0;                                                                           \
    for (int64_t i = 0; i < n; i++) {                                                       \
        const double a = (double)mean[i] * (double)rstd[i];                                 \
        const double v = a < 0 ? -a : a;                                                    \
        if (v > m) m = v;                                                                   \
    }                                                                                       \
    return m;                                                                               \
}

/* The per-(n, c) numbers between the two passes. Statistic of (n, c): n·sn + c/cpg
 * (BatchNorm sn = 0, cpg = 1: one per channel; GroupNorm sn = G, cpg = C/G; InstanceNorm
 * sn = C, cpg = 1); r and mu are per statistic, gamma and beta per channel (NULL: 1 and 0). */
#define SMALL(T, SUF)                                                                       \
void prepare_##SUF(int64_t n, int64_t c, int64_t sn, int64_t cpg, const T *gamma,           \
                   const T *beta, const T *r, const T *mu, T *a, T *b) {                    \
    /* z = a·x + b = γ·r·(x − μ) + β, the pre-activation a recompute kind rebuilds */        \
    for (int64_t i = 0; i < n; i++)                                                         \
        for (int64_t k = 0; k < c; k++) {                                                   \
            const int64_t st = i * sn + k / cpg;                                            \
            const T ak = (gamma ? gamma[k] : (T)1) * r[st];                                 \
            a[i * c + k] = ak;                                                              \
            b[i * c + k] = (beta ? beta[k] : (T)0) - mu[st] * ak;                           \
        }                                                                                   \
}                                                                                           \
/* From S1 = Σ dz and S2 = Σ dz·u: dγ, dβ and dx = c1·dz + c2·u + c3 (see __init__.py).     \
 * acc: 2·nstats zeroed doubles. fixed: the statistics are constants (BatchNorm in eval).    \
 * Returns 0 where a coefficient is not finite (the caller then takes another way). */      \
int coefs_##SUF(int64_t n, int64_t c, int64_t sn, int64_t cpg, int64_t nstats, double count, \
                const T *gamma, const T *beta, const T *r, const T *mu, int invert,         \
                int fixed, const double *s1, const double *s2, double *acc, T *coef,        \
                double *dgamma, double *dbeta) {                                            \
    double *ga = acc, *gb = acc + nstats;                                                   \
    for (int64_t i = 0; i < n; i++)                                                         \
        for (int64_t k = 0; k < c; k++) {                                                   \
            const int64_t st = i * sn + k / cpg, j = i * c + k;                             \
            const xhat_map xm = xhat_##SUF(gamma, beta, r, mu, invert, k, st);              \
            const double g = xm.gamma, p = xm.alpha * s2[j] + xm.delta * s1[j];             \
            if (dgamma) dgamma[k] += p;                                                     \
            if (dbeta) dbeta[k] += s1[j];                                                   \
            ga[st] += g * s1[j];                                                            \
            gb[st] += g * p;                                                                \
        }                                                                                   \
    int finite = 1;                                                                         \
    for (int64_t i = 0; i < n; i++)                                                         \
        for (int64_t k = 0; k < c; k++) {                                                   \
            const int64_t st = i * sn + k / cpg, j = i * c + k;                             \
            const xhat_map xm = xhat_##SUF(gamma, beta, r, mu, invert, k, st);              \
            const double g = xm.gamma, rr = xm.rstd, al = xm.alpha, de = xm.delta;          \
            const double big_a = fixed ? 0.0 : ga[st] / count, big_b = fixed ? 0.0 : gb[st] / count;\
            const T k1 = (T)(rr * g), k2 = (T)(-rr * big_b * al), k3 = (T)(-rr * (big_a + big_b * de));\
            coef[j] = k1;                                                                   \
            coef[n * c + j] = k2;                                                           \
            coef[2 * n * c + j] = k3;                                                       \
            finite &= (k1 - k1 == 0) & (k2 - k2 == 0) & (k3 - k3 == 0);                     \
        }                                                                                   \
    return finite;                                                                          \
}

#define ALL_KINDS(T, SUF)        \
    BODIES(T, SUF)               \
    XHAT(T, SUF)                 \
    SMALL(T, SUF)                \
    AFFINE(T, SUF)               \
    RATIO(T, SUF)                \
    RECOMPUTES(T, SUF, ident)    \
    RECOMPUTES(T, SUF, inv_leaky) \
    RECOMPUTES(T, SUF, rec_relu) \
    RECOMPUTES(T, SUF, rec_leaky) \
    KERNELS(T, SUF, ident)       \
    KERNELS(T, SUF, inv_leaky)   \
    KERNELS(T, SUF, rec_relu)    \
    KERNELS(T, SUF, rec_leaky)   \
    FUSED(T, SUF, ident)         \
    FUSED(T, SUF, inv_leaky)     \
    FUSED(T, SUF, rec_relu)      \
    FUSED(T, SUF, rec_leaky)

#define FLOAT32_KINDS(KIND) KERNELS(float, f32, KIND) FUSED(float, f32, KIND)

ALL_KINDS(float, f32)
ALL_KINDS(double, f64)
FLOAT32_KINDS(rec_silu)
FLOAT32_KINDS(rec_sigmoid)
FLOAT32_KINDS(rec_tanh)
FLOAT32_KINDS(rec_gelu)
FLOAT32_KINDS(rec_elu)
FLOAT32_KINDS(inv_elu)
