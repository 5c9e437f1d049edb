#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdint.h>
#include "ggml.h"
#include "ggml-quants.h"
#include "ggml-common.h"
size_t ggml_row_size(enum ggml_type t, int64_t n) { (void)t; (void)n; return 0; }
const char * ggml_type_name(enum ggml_type t) { (void)t; return "?"; }
size_t ggml_type_size(enum ggml_type t) { (void)t; return 0; }
int main(int argc, char ** argv) {
    const char * ty = argv[1];
    FILE * f = fopen(argv[2], "rb"); fseek(f, 0, SEEK_END); long nb = ftell(f); fseek(f, 0, SEEK_SET);
    float * x = malloc(nb); fread(x, 1, nb, f); fclose(f);
    int64_t n = nb / 4;
    uint8_t * out = calloc(n * 2, 1); size_t sz = 0;
#define Q(name, fn, blk, bs) if (!strcmp(ty, name)) { fn(x, (void*)out, n); sz = n / bs * sizeof(blk); }
    Q("Q4_0", quantize_row_q4_0_ref, block_q4_0, 32)
    Q("Q4_1", quantize_row_q4_1_ref, block_q4_1, 32)
    Q("Q5_0", quantize_row_q5_0_ref, block_q5_0, 32)
    Q("Q5_1", quantize_row_q5_1_ref, block_q5_1, 32)
    Q("Q8_0", quantize_row_q8_0_ref, block_q8_0, 32)
    Q("Q8_1", quantize_row_q8_1_ref, block_q8_1, 32)
    Q("Q2_K", quantize_row_q2_K_ref, block_q2_K, 256)
    Q("Q3_K", quantize_row_q3_K_ref, block_q3_K, 256)
    Q("Q4_K", quantize_row_q4_K_ref, block_q4_K, 256)
    Q("Q5_K", quantize_row_q5_K_ref, block_q5_K, 256)
    Q("Q6_K", quantize_row_q6_K_ref, block_q6_K, 256)
    Q("Q8_K", quantize_row_q8_K_ref, block_q8_K, 256)
    Q("TQ1_0", quantize_row_tq1_0_ref, block_tq1_0, 256)
    Q("TQ2_0", quantize_row_tq2_0_ref, block_tq2_0, 256)
    Q("MXFP4", quantize_row_mxfp4_ref, block_mxfp4, 32)
    Q("IQ4_XS", quantize_row_iq4_xs_ref, block_iq4_xs, 256)
    if (!strcmp(ty, "IQ4_NL")) { quantize_iq4_nl(x, out, n / 32, 32, NULL); sz = n / 32 * sizeof(block_iq4_nl); }
    if (!sz) { fprintf(stderr, "unknown type %s\n", ty); return 1; }
    fwrite(out, 1, sz, stdout);
    return 0;
}
