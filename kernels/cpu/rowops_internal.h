/* rowops_internal.h - constants shared by the row-pass tables (kernels/cpu/
 * rowops.c and rowops_avx2.c only): the exp method is described in rowops.c.
 */
#ifndef SS_ROWOPS_INTERNAL_H
#define SS_ROWOPS_INTERNAL_H

#include "kernels/rowops.h"

#define KCPU_EXP_LOG2E 1.44269504f
#define KCPU_EXP_LN2_HI 0.693145751953125f /* 0x1.62e4p-1: few mantissa bits */
#define KCPU_EXP_LN2_LO 1.42860677e-06f    /* ln 2 - KCPU_EXP_LN2_HI */
#define KCPU_EXP_SHIFTER 12582912.0f       /* 1.5 * 2^23 */
#define KCPU_EXP_SHIFTER_BITS 0x4B400000

#if defined(__x86_64__)
extern const struct kcpu_rowops kcpu_rowops_avx2;
#endif

#endif
