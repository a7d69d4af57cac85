/* grammar_check.c - static checks of a flattened grammar.
 *
 * - productive: the root must derive at least one finite string;
 * - nullable: which rules derive the empty string (used below);
 * - unbounded left recursion: a reference B reached from rule A through a
 *   nullable prefix is a "left edge" A -> B; it "grows" the parse stack when
 *   more elements follow it in its alternative (a tail reference replaces the
 *   caller's frame instead). A cycle of left edges with a growing edge would
 *   push frames forever, so it is rejected; cycles of tail edges only (x*
 *   over a nullable x) are cut by the matcher's visited set.
 * Both fixpoints are worklists over reference occurrences: linear in the
 * grammar size whatever the rule order.
 */
#include <stdlib.h>
#include <string.h>

#include "engine/grammar_internal.h"
#include "kernels/ss_error.h"

struct occ {
    int32_t *off; /* [n_rules + 1] */
    int32_t *alt; /* alternatives in which each rule occurs, one entry per occurrence */
    int32_t *alt_rule; /* [n_alts] */
};

static int occ_build(const struct gram *g, struct occ *o) {
    int32_t n_alts = g->alt_off[g->n_rules];
    o->off = calloc((size_t)g->n_rules + 1, sizeof(int32_t));
    o->alt_rule = malloc(sizeof(int32_t) * (size_t)(n_alts + 1));
    int64_t n_ref = 0;
    for (int32_t p = 0; p < g->n_el; p++)
        if (g->el[p].op == GE_REF) n_ref++;
    o->alt = malloc(sizeof(int32_t) * (size_t)(n_ref + 1));
    if (!o->off || !o->alt_rule || !o->alt) return SS_ENOMEM;
    for (int32_t r = 0; r < g->n_rules; r++)
        for (int32_t a = g->alt_off[r]; a < g->alt_off[r + 1]; a++) {
            o->alt_rule[a] = r;
            for (int32_t p = g->alts[a]; !gram_alt_done(g, p); p++)
                if (g->el[p].op == GE_REF) o->off[g->el[p].arg + 1]++;
        }
    for (int32_t r = 0; r < g->n_rules; r++) o->off[r + 1] += o->off[r];
    int32_t *fill = malloc(sizeof(int32_t) * (size_t)(g->n_rules + 1));
    if (!fill) return SS_ENOMEM;
    memcpy(fill, o->off, sizeof(int32_t) * (size_t)(g->n_rules + 1));
    for (int32_t a = 0; a < n_alts; a++)
        for (int32_t p = g->alts[a]; !gram_alt_done(g, p); p++)
            if (g->el[p].op == GE_REF) o->alt[fill[g->el[p].arg]++] = a;
    free(fill);
    return 0;
}

static void occ_free(struct occ *o) {
    free(o->off);
    free(o->alt);
    free(o->alt_rule);
}

static int set_empty(const uint32_t *s) {
    for (int i = 0; i < 8; i++)
        if (s[i]) return 0;
    return 1;
}

/* Fixpoint: a rule holds when one of its alternatives has every element
 * holding. A SET holds for `productive` when non-empty, never for nullable.
 * Returns 0 and out[n_rules] (1/0), or SS_ENOMEM. */
static int fixpoint(const struct gram *g, const struct occ *o, int productive, uint8_t *out) {
    int32_t n_alts = g->alt_off[g->n_rules];
    int32_t *need = malloc(sizeof(int32_t) * (size_t)(n_alts + 1));
    int32_t *work = malloc(sizeof(int32_t) * (size_t)(g->n_rules + 1));
    if (!need || !work) {
        free(need);
        free(work);
        return SS_ENOMEM;
    }
    int32_t nw = 0;
    memset(out, 0, (size_t)g->n_rules);
    for (int32_t a = 0; a < n_alts; a++) {
        need[a] = 0;
        for (int32_t p = g->alts[a]; !gram_alt_done(g, p); p++) {
            if (g->el[p].op == GE_REF) {
                need[a]++;
            } else if (!productive || set_empty(g->sets[g->el[p].arg])) {
                need[a] = INT32_MAX / 2; /* never */
                break;
            }
        }
        int32_t r = o->alt_rule[a];
        if (need[a] == 0 && !out[r]) {
            out[r] = 1;
            work[nw++] = r;
        }
    }
    while (nw > 0) {
        int32_t r = work[--nw];
        for (int32_t i = o->off[r]; i < o->off[r + 1]; i++) {
            int32_t a = o->alt[i];
            int32_t owner = o->alt_rule[a];
            if (--need[a] == 0 && !out[owner]) {
                out[owner] = 1;
                work[nw++] = owner;
            }
        }
    }
    free(need);
    free(work);
    return 0;
}

/* Left edges of rule r: calls fn for each (B, grows). */
struct ledge {
    int32_t to;
    int grows;
};

static int32_t left_edges(const struct gram *g, const uint8_t *nullable, int32_t r, struct ledge *e, int32_t cap) {
    int32_t n = 0;
    for (int32_t a = g->alt_off[r]; a < g->alt_off[r + 1]; a++)
        for (int32_t p = g->alts[a]; !gram_alt_done(g, p); p++) {
            if (g->el[p].op != GE_REF) break;
            if (n < cap) e[n] = (struct ledge){g->el[p].arg, !gram_alt_done(g, p + 1)};
            n++;
            if (!nullable[g->el[p].arg]) break;
        }
    return n;
}

/* Tarjan's strongly connected components, iterative; comp[r] = component id. */
static int scc(const struct gram *g, const uint8_t *nullable, int32_t *comp) {
    int32_t R = g->n_rules;
    int32_t *idx = malloc(sizeof(int32_t) * (size_t)R), *low = malloc(sizeof(int32_t) * (size_t)R);
    int32_t *stk = malloc(sizeof(int32_t) * (size_t)R), *cs = malloc(sizeof(int32_t) * (size_t)R);
    int32_t *ci = malloc(sizeof(int32_t) * (size_t)R);
    uint8_t *on = calloc((size_t)R, 1);
    struct ledge *e = malloc(sizeof(*e) * 64);
    int rc = (!idx || !low || !stk || !cs || !ci || !on || !e) ? SS_ENOMEM : 0;
    int32_t counter = 0, ns = 0, ncomp = 0;
    for (int32_t i = 0; !rc && i < R; i++) idx[i] = -1;
    for (int32_t s0 = 0; !rc && s0 < R; s0++) {
        if (idx[s0] >= 0) continue;
        int32_t nc = 0;
        cs[nc] = s0;
        ci[nc++] = 0;
        idx[s0] = low[s0] = counter++;
        stk[ns++] = s0;
        on[s0] = 1;
        while (nc > 0) {
            int32_t v = cs[nc - 1];
            int32_t ne = left_edges(g, nullable, v, e, 64);
            if (ne > 64) { /* rare: a rule with > 64 left references; recompute wider */
                struct ledge *w = realloc(e, sizeof(*e) * (size_t)ne);
                if (!w) {
                    rc = SS_ENOMEM;
                    break;
                }
                e = w;
                left_edges(g, nullable, v, e, ne);
            }
            if (ci[nc - 1] < ne) {
                int32_t w = e[ci[nc - 1]++].to;
                if (idx[w] < 0) {
                    idx[w] = low[w] = counter++;
                    stk[ns++] = w;
                    on[w] = 1;
                    cs[nc] = w;
                    ci[nc++] = 0;
                } else if (on[w] && idx[w] < low[v]) {
                    low[v] = idx[w];
                }
                continue;
            }
            if (low[v] == idx[v]) {
                int32_t w;
                do {
                    w = stk[--ns];
                    on[w] = 0;
                    comp[w] = ncomp;
                } while (w != v);
                ncomp++;
            }
            nc--;
            if (nc > 0 && low[v] < low[cs[nc - 1]]) low[cs[nc - 1]] = low[v];
        }
    }
    free(idx);
    free(low);
    free(stk);
    free(cs);
    free(ci);
    free(on);
    free(e);
    return rc;
}

int gram_check(struct gram *g, char *err, size_t err_len);

int gram_check(struct gram *g, char *err, size_t err_len) {
    struct occ o = {0};
    uint8_t *prod = malloc((size_t)g->n_rules + 1), *nul = malloc((size_t)g->n_rules + 1);
    int32_t *comp = malloc(sizeof(int32_t) * ((size_t)g->n_rules + 1));
    int rc = (!prod || !nul || !comp) ? SS_ENOMEM : occ_build(g, &o);
    if (!rc) rc = fixpoint(g, &o, 1, prod);
    if (!rc) rc = fixpoint(g, &o, 0, nul);
    if (!rc && !prod[g->root]) {
        gram_errf(err, err_len, "grammar: the root rule matches no finite string");
        rc = SS_EINVAL;
    }
    if (!rc) rc = scc(g, nul, comp);
    for (int32_t r = 0; !rc && r < g->n_rules; r++)
        for (int32_t a = g->alt_off[r]; !rc && a < g->alt_off[r + 1]; a++)
            for (int32_t p = g->alts[a]; g->el[p].op == GE_REF; p++) {
                int32_t to = g->el[p].arg;
                if (!gram_alt_done(g, p + 1) && comp[to] == comp[r]) {
                    gram_errf(err, err_len, "grammar: left recursion (a rule reaches itself before "
                                            "consuming input); rewrite it with repetition, e.g. "
                                            "x ::= y (\"op\" y)*");
                    rc = SS_EINVAL;
                    break;
                }
                if (!nul[to]) break;
            }
    if (rc == SS_ENOMEM) gram_errf(err, err_len, "grammar: out of memory");
    occ_free(&o);
    free(prod);
    free(nul);
    free(comp);
    return rc;
}
