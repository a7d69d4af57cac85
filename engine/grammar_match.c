/* grammar_match.c - the vocabulary byte trie and the token-mask matcher.
 *
 * Parse stacks are hash-consed linked frames: node (pos, parent), node 0 the
 * empty stack (NIL: the input so far is a complete sentence). A parser state
 * is the sorted set of "ready" nodes, those whose top is a SET element (plus
 * NIL when complete); states are interned, and the transition on each byte is
 * memoised, so the matcher is a lazily built DFA.
 *
 *   closure(x): x a REF  -> for each alternative a of its rule:
 *                           push node(a, cont(x))   (or cont(x) if a is empty)
 *               x a SET  -> ready
 *   cont(x)   = node(pos+1, parent)  or parent when pos+1 ends the alternative
 *               (a reference in tail position reuses its caller's frame)
 *
 * A visited stamp per node makes each closure visit a node once, which cuts
 * the cycles of nullable loops. The mask of a state is one pre-order walk of
 * the vocabulary trie: a subtree whose prefix leads to the dead state is
 * skipped whole. Masks are cached per state (GRAM_MASK_CACHE slots, round
 * robin), so the steady state of a long string or number costs a lookup.
 *
 * Growth is bounded: when the node or state tables pass their soft limits,
 * gram_matcher_mask compacts (re-interns the current state's stacks into
 * fresh tables); the hard limits give SS_ETOOLONG.
 */
#include <stdlib.h>
#include <string.h>

#include "engine/grammar_internal.h"
#include "engine/tokenizer.h"
#include "kernels/ss_error.h"

#define NIL 0
#define DEAD 0
#define SOFT_NODES (1 << 18)
#define HARD_NODES (1 << 20)
#define SOFT_STATES 3072
#define HARD_STATES 4096

/* ---------- vocabulary trie ---------- */

struct gram_vocab {
    int32_t n_vocab;
    int32_t n_nodes;      /* node 0 is the root (empty prefix) */
    int32_t max_depth;
    uint8_t *byte;        /* [n_nodes] byte on the edge into the node */
    uint16_t *depth;      /* [n_nodes] */
    int32_t *end;         /* [n_nodes] pre-order index just past the subtree */
    int32_t *tok;         /* [n_nodes] first token whose piece ends here, -1 none */
    int32_t *tok_next;    /* [n_vocab] next token with the same piece, -1 none */
    int64_t *piece_off;   /* [n_vocab + 1] into pieces */
    char *pieces;
};

static const struct gram_vocab *sort_vocab;
static int cmp_piece(const void *a, const void *b) {
    const struct gram_vocab *v = sort_vocab;
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    int64_t lx = v->piece_off[x + 1] - v->piece_off[x], ly = v->piece_off[y + 1] - v->piece_off[y];
    int c = memcmp(v->pieces + v->piece_off[x], v->pieces + v->piece_off[y], (size_t)(lx < ly ? lx : ly));
    if (c) return c;
    if (lx != ly) return lx < ly ? -1 : 1;
    return x < y ? -1 : x > y;
}

static int vocab_pieces(struct gram_vocab *v, const struct tok *t) {
    int cap = tok_max_piece_len(t) + 8;
    char *buf = malloc((size_t)cap);
    int64_t total = 0;
    v->piece_off = malloc(sizeof(int64_t) * ((size_t)v->n_vocab + 1));
    if (!buf || !v->piece_off) {
        free(buf);
        return SS_ENOMEM;
    }
    for (int32_t i = 0; i < v->n_vocab; i++) {
        int n = tok_piece(t, i, buf, (size_t)cap);
        total += n > 0 ? n : 0;
    }
    v->pieces = malloc((size_t)total + 1);
    if (!v->pieces) {
        free(buf);
        return SS_ENOMEM;
    }
    int64_t w = 0;
    for (int32_t i = 0; i < v->n_vocab; i++) {
        v->piece_off[i] = w;
        int n = tok_piece(t, i, buf, (size_t)cap);
        if (n > 0) {
            memcpy(v->pieces + w, buf, (size_t)n);
            w += n;
        }
    }
    v->piece_off[v->n_vocab] = w;
    free(buf);
    return 0;
}

/* Pre-order trie from the ids sorted by piece: each token adds the nodes
 * past its common prefix with the previous one. */
static int vocab_trie(struct gram_vocab *v, const int32_t *ids, int32_t n_ids) {
    int64_t cap = 1;
    for (int32_t i = 0; i < n_ids; i++) cap += v->piece_off[ids[i] + 1] - v->piece_off[ids[i]];
    if (cap > INT32_MAX / 2) return SS_ETOOLONG;
    v->byte = malloc((size_t)cap);
    v->depth = malloc(sizeof(uint16_t) * (size_t)cap);
    v->end = malloc(sizeof(int32_t) * (size_t)cap);
    v->tok = malloc(sizeof(int32_t) * (size_t)cap);
    int32_t *open = malloc(sizeof(int32_t) * ((size_t)v->max_depth + 2));
    if (!v->byte || !v->depth || !v->end || !v->tok || !open) {
        free(open);
        return SS_ENOMEM;
    }
    int32_t n = 1, n_open = 1; /* open[d]: the node at depth d on the current path */
    open[0] = 0;
    v->byte[0] = 0;
    v->depth[0] = 0;
    v->tok[0] = -1;
    const char *prev = NULL;
    int64_t prev_len = 0;
    for (int32_t i = 0; i < n_ids; i++) {
        int32_t id = ids[i];
        const char *s = v->pieces + v->piece_off[id];
        int64_t len = v->piece_off[id + 1] - v->piece_off[id];
        int64_t l = 0;
        while (prev && l < len && l < prev_len && s[l] == prev[l]) l++;
        while (n_open > l + 1) v->end[open[--n_open]] = n; /* close deeper nodes */
        if (l == len && prev) { /* same piece as the previous token */
            int32_t nd = open[len];
            int32_t *pp = &v->tok[nd];
            while (*pp >= 0) pp = &v->tok_next[*pp];
            *pp = id;
            continue;
        }
        for (int64_t d = l; d < len; d++) {
            v->byte[n] = (uint8_t)s[d];
            v->depth[n] = (uint16_t)(d + 1);
            v->tok[n] = -1;
            open[n_open++] = n;
            n++;
        }
        v->tok[n - 1] = id;
        prev = s;
        prev_len = len;
    }
    while (n_open > 0) v->end[open[--n_open]] = n;
    v->n_nodes = n;
    free(open);
    return 0;
}

int gram_vocab_new(struct gram_vocab **out, const struct tok *t) {
    *out = NULL;
    struct gram_vocab *v = calloc(1, sizeof(*v));
    if (!v) return SS_ENOMEM;
    v->n_vocab = tok_n_vocab(t);
    int rc = vocab_pieces(v, t);
    int32_t *ids = rc ? NULL : malloc(sizeof(int32_t) * ((size_t)v->n_vocab + 1));
    v->tok_next = rc ? NULL : malloc(sizeof(int32_t) * ((size_t)v->n_vocab + 1));
    if (!rc && (!ids || !v->tok_next)) rc = SS_ENOMEM;
    int32_t n_ids = 0;
    for (int32_t i = 0; !rc && i < v->n_vocab; i++) {
        int64_t len = v->piece_off[i + 1] - v->piece_off[i];
        v->tok_next[i] = -1;
        if (len == 0) continue; /* control tokens: never in a mask */
        if (len > 60000) {
            rc = SS_ETOOLONG;
            break;
        }
        if (len > v->max_depth) v->max_depth = (int32_t)len;
        ids[n_ids++] = i;
    }
    if (!rc) {
        sort_vocab = v; /* NOTE: qsort has no context argument; built once per model, not concurrently */
        qsort(ids, (size_t)n_ids, sizeof(int32_t), cmp_piece);
        sort_vocab = NULL;
        rc = vocab_trie(v, ids, n_ids);
    }
    free(ids);
    if (rc) {
        gram_vocab_free(v);
        return rc;
    }
    *out = v;
    return 0;
}

void gram_vocab_free(struct gram_vocab *v) {
    if (!v) return;
    free(v->byte);
    free(v->depth);
    free(v->end);
    free(v->tok);
    free(v->tok_next);
    free(v->piece_off);
    free(v->pieces);
    free(v);
}

int32_t gram_vocab_size(const struct gram_vocab *v) { return v ? v->n_vocab : 0; }

/* ---------- matcher ---------- */

struct gnode {
    int32_t pos, parent, depth;
};

struct gstate {
    int64_t off;  /* ready nodes: list[off .. off + n) */
    int32_t n;
    int32_t accept;
    int32_t store_slot; /* its mask in the store (valid while the slot's gen matches), -1 none */
    uint32_t store_gen;
    uint32_t hash;
};

struct gram_matcher {
    const struct gram *g;
    const struct gram_vocab *v;
    int err; /* sticky run-time limit error of the current operation */

    struct gnode *nodes;
    uint32_t *stamp;
    int32_t n_nodes, cap_nodes;
    int32_t *node_ht; /* open addressing over node ids, -1 empty */
    uint32_t node_ht_cap;
    uint32_t gen;

    struct gstate *states;
    int32_t n_states, cap_states;
    int32_t *trans;   /* [cap_states][256]: next state, -1 unknown */
    int32_t *state_ht;
    uint32_t state_ht_cap;
    int32_t *list;    /* ready-node lists of all states */
    int64_t n_list, cap_list;

    int32_t cur;
    int32_t *work, *out; /* closure scratch [GRAM_MAX_STACKS * 4] */
    int32_t n_work, n_out, cap_work;

    struct gram_store *store;
    int own_store;
    int cls;          /* grammar class in the store, -1 until known */
    uint32_t cls_gen;
    uint32_t *scratch; /* [words] mask being computed */
    int32_t *key;     /* canonical state: [cap_key] */
    int64_t cap_key;
    int32_t *walk_state; /* [max_depth + 1] */
    uint64_t n_walks, n_hits;
};

static uint32_t hash2(uint32_t a, uint32_t b) {
    uint64_t x = ((uint64_t)a << 32 | b) * 0x9E3779B97F4A7C15ull;
    return (uint32_t)(x >> 29);
}

static int node_ht_grow(struct gram_matcher *m) {
    uint32_t cap = m->node_ht_cap ? m->node_ht_cap * 2 : 1024;
    int32_t *ht = malloc(sizeof(int32_t) * cap);
    if (!ht) return SS_ENOMEM;
    memset(ht, -1, sizeof(int32_t) * cap);
    for (int32_t i = 1; i < m->n_nodes; i++) {
        uint32_t h = hash2((uint32_t)m->nodes[i].pos, (uint32_t)m->nodes[i].parent) & (cap - 1);
        while (ht[h] >= 0) h = (h + 1) & (cap - 1);
        ht[h] = i;
    }
    free(m->node_ht);
    m->node_ht = ht;
    m->node_ht_cap = cap;
    return 0;
}

/* The node (pos, parent), created if new; -1 with m->err set past a limit. */
static int32_t node_get(struct gram_matcher *m, int32_t pos, int32_t parent) {
    uint32_t h = hash2((uint32_t)pos, (uint32_t)parent) & (m->node_ht_cap - 1);
    for (int32_t i; (i = m->node_ht[h]) >= 0; h = (h + 1) & (m->node_ht_cap - 1))
        if (m->nodes[i].pos == pos && m->nodes[i].parent == parent) return i;
    int32_t depth = m->nodes[parent].depth + 1;
    if (depth > GRAM_MAX_DEPTH || m->n_nodes >= HARD_NODES) {
        m->err = SS_ETOOLONG;
        return -1;
    }
    if (m->n_nodes == m->cap_nodes) {
        int32_t cap = m->cap_nodes * 2;
        struct gnode *nn = realloc(m->nodes, sizeof(*nn) * (size_t)cap);
        uint32_t *ns = nn ? realloc(m->stamp, sizeof(*ns) * (size_t)cap) : NULL;
        if (nn) m->nodes = nn;
        if (!nn || !ns) {
            m->err = SS_ENOMEM;
            return -1;
        }
        m->stamp = ns;
        m->cap_nodes = cap;
    }
    int32_t id = m->n_nodes++;
    m->nodes[id] = (struct gnode){pos, parent, depth};
    m->stamp[id] = 0;
    m->node_ht[h] = id;
    if ((uint32_t)m->n_nodes * 2 > m->node_ht_cap && node_ht_grow(m) != 0) m->err = SS_ENOMEM;
    return id;
}

static void work_push(struct gram_matcher *m, int32_t x) {
    if (x < 0) return;
    if (m->n_work == m->cap_work) {
        m->err = SS_ETOOLONG;
        return;
    }
    m->work[m->n_work++] = x;
}

/* Where the parse continues after the element at node x matched. */
static int32_t node_cont(struct gram_matcher *m, int32_t x) {
    const struct gnode *n = &m->nodes[x];
    if (gram_alt_done(m->g, n->pos + 1)) return n->parent;
    return node_get(m, n->pos + 1, n->parent);
}

/* Expands the work list into ready nodes (m->out), visiting each node once
 * per generation. */
static void closure(struct gram_matcher *m) {
    const struct gram *g = m->g;
    while (m->n_work > 0 && !m->err) {
        int32_t x = m->work[--m->n_work];
        if (m->stamp[x] == m->gen) continue;
        m->stamp[x] = m->gen;
        const struct gram_elem *e = x == NIL ? NULL : &g->el[m->nodes[x].pos];
        if (!e || e->op == GE_SET) {
            if (m->n_out >= GRAM_MAX_STACKS) {
                m->err = SS_ETOOLONG;
                return;
            }
            m->out[m->n_out++] = x;
            continue;
        }
        int32_t c = node_cont(m, x);
        if (c < 0) continue; /* past a limit: m->err is set */
        for (int32_t a = g->alt_off[e->arg]; a < g->alt_off[e->arg + 1]; a++) {
            int32_t p = g->alts[a];
            work_push(m, gram_alt_done(g, p) ? c : node_get(m, p, c));
        }
    }
}

static int cmp_i32(const void *a, const void *b) {
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return x < y ? -1 : x > y;
}

/* Interns m->out[n_out] (sorted here) as a state; -1 with m->err on failure. */
static int32_t state_intern(struct gram_matcher *m) {
    qsort(m->out, (size_t)m->n_out, sizeof(int32_t), cmp_i32);
    if (m->n_out == 0) return DEAD;
    uint32_t h = 2166136261u;
    for (int32_t i = 0; i < m->n_out; i++) h = hash2(h, (uint32_t)m->out[i]);
    uint32_t mask = m->state_ht_cap - 1;
    uint32_t k = h & mask;
    for (int32_t s; (s = m->state_ht[k]) >= 0; k = (k + 1) & mask) {
        const struct gstate *st = &m->states[s];
        if (st->hash == h && st->n == m->n_out &&
            memcmp(m->list + st->off, m->out, sizeof(int32_t) * (size_t)m->n_out) == 0)
            return s;
    }
    if (m->n_states >= HARD_STATES) {
        m->err = SS_ETOOLONG;
        return -1;
    }
    if (m->n_states == m->cap_states) {
        int32_t cap = m->cap_states * 2;
        struct gstate *ns = realloc(m->states, sizeof(*ns) * (size_t)cap);
        if (ns) m->states = ns;
        int32_t *nt = ns ? realloc(m->trans, sizeof(int32_t) * 256 * (size_t)cap) : NULL;
        if (!nt) {
            m->err = SS_ENOMEM;
            return -1;
        }
        m->trans = nt;
        m->cap_states = cap;
    }
    if (m->n_list + m->n_out > m->cap_list) {
        int64_t cap = m->cap_list * 2;
        while (cap < m->n_list + m->n_out) cap *= 2;
        int32_t *nl = realloc(m->list, sizeof(int32_t) * (size_t)cap);
        if (!nl) {
            m->err = SS_ENOMEM;
            return -1;
        }
        m->list = nl;
        m->cap_list = cap;
    }
    int32_t s = m->n_states++;
    struct gstate *st = &m->states[s];
    st->off = m->n_list;
    st->n = m->n_out;
    st->accept = m->out[0] == NIL;
    st->store_slot = -1;
    st->store_gen = 0;
    st->hash = h;
    memcpy(m->list + m->n_list, m->out, sizeof(int32_t) * (size_t)m->n_out);
    m->n_list += m->n_out;
    memset(m->trans + (size_t)s * 256, -1, sizeof(int32_t) * 256);
    m->state_ht[k] = s;
    return s;
}

/* The state after byte b from state s (memoised); DEAD if b is rejected,
 * -1 with m->err past a limit. */
static int32_t step(struct gram_matcher *m, int32_t s, unsigned b) {
    int32_t t = m->trans[(size_t)s * 256 + b];
    if (t >= 0) return t;
    m->gen++;
    m->n_out = m->n_work = 0;
    const struct gstate *st = &m->states[s];
    for (int32_t i = 0; i < st->n; i++) {
        int32_t x = m->list[st->off + i];
        if (x == NIL) continue;
        const struct gram_elem *e = &m->g->el[m->nodes[x].pos];
        if (gram_set_has(m->g->sets[e->arg], b)) work_push(m, node_cont(m, x));
        closure(m);
    }
    if (m->err) return -1;
    t = state_intern(m);
    if (t >= 0) m->trans[(size_t)s * 256 + b] = t;
    return t;
}

/* Empties every table and interns the initial state, or the stacks given
 * as root-to-top position lists (compaction). */
static int tables_reset(struct gram_matcher *m) {
    m->n_nodes = 1;
    m->nodes[0] = (struct gnode){-1, -1, 0};
    m->stamp[0] = 0;
    memset(m->node_ht, -1, sizeof(int32_t) * m->node_ht_cap);
    m->n_states = 1; /* DEAD */
    m->states[0] = (struct gstate){0, 0, 0, -1, 0, 0};
    memset(m->trans, 0, sizeof(int32_t) * 256); /* DEAD stays DEAD */
    memset(m->state_ht, -1, sizeof(int32_t) * m->state_ht_cap);
    m->n_list = 0;
    return 0;
}

static int32_t initial_state(struct gram_matcher *m) {
    m->gen++;
    m->n_out = m->n_work = 0;
    const struct gram *g = m->g;
    for (int32_t a = g->alt_off[g->root]; a < g->alt_off[g->root + 1]; a++) {
        int32_t p = g->alts[a];
        work_push(m, gram_alt_done(g, p) ? NIL : node_get(m, p, NIL));
    }
    closure(m);
    return m->err ? -1 : state_intern(m);
}

/* Re-interns the current state's stacks into fresh tables. */
static int compact(struct gram_matcher *m) {
    const struct gstate *st = &m->states[m->cur];
    int32_t n = st->n, total = 0;
    int32_t *chains = NULL, *len = malloc(sizeof(int32_t) * (size_t)(n + 1));
    if (!len) return SS_ENOMEM;
    for (int32_t i = 0; i < n; i++) total += len[i] = m->nodes[m->list[st->off + i]].depth;
    chains = malloc(sizeof(int32_t) * (size_t)(total + 1));
    if (!chains) {
        free(len);
        return SS_ENOMEM;
    }
    int32_t w = 0;
    for (int32_t i = 0; i < n; i++) { /* root-first positions of each stack */
        int32_t x = m->list[st->off + i];
        for (int32_t d = len[i] - 1; d >= 0; d--, x = m->nodes[x].parent) chains[w + d] = m->nodes[x].pos;
        w += len[i];
    }
    tables_reset(m);
    m->n_out = 0;
    w = 0;
    for (int32_t i = 0; i < n && !m->err; i++) {
        int32_t x = NIL;
        for (int32_t d = 0; d < len[i] && x >= 0; d++) x = node_get(m, chains[w + d], x);
        w += len[i];
        if (x >= 0) m->out[m->n_out++] = x;
    }
    free(chains);
    free(len);
    int32_t s = m->err ? -1 : state_intern(m);
    if (s < 0) return m->err ? m->err : SS_ENOMEM;
    m->cur = s;
    return 0;
}

int gram_matcher_new(struct gram_matcher **out, const struct gram *g, const struct gram_vocab *v,
                     struct gram_store *store) {
    *out = NULL;
    struct gram_matcher *m = calloc(1, sizeof(*m));
    if (!m) return SS_ENOMEM;
    m->g = g;
    m->v = v;
    m->cls = -1;
    m->store = store;
    if (v && !store) {
        if (gram_store_new(&m->store, v->n_vocab, GRAM_MASK_CACHE) != 0) {
            free(m);
            return SS_ENOMEM;
        }
        m->own_store = 1;
    }
    m->cap_nodes = 1024;
    m->nodes = malloc(sizeof(*m->nodes) * (size_t)m->cap_nodes);
    m->stamp = malloc(sizeof(*m->stamp) * (size_t)m->cap_nodes);
    m->cap_states = 64;
    m->states = malloc(sizeof(*m->states) * (size_t)m->cap_states);
    m->trans = malloc(sizeof(int32_t) * 256 * (size_t)m->cap_states);
    m->state_ht_cap = 2 * HARD_STATES;
    m->state_ht = malloc(sizeof(int32_t) * m->state_ht_cap);
    m->cap_list = 1024;
    m->list = malloc(sizeof(int32_t) * (size_t)m->cap_list);
    m->cap_work = GRAM_MAX_STACKS * 4;
    m->work = malloc(sizeof(int32_t) * (size_t)m->cap_work);
    m->out = malloc(sizeof(int32_t) * (GRAM_MAX_STACKS + 1));
    int words = (gram_vocab_size(v) + 31) / 32;
    m->scratch = v ? malloc(sizeof(uint32_t) * (size_t)words) : NULL;
    m->walk_state = v ? malloc(sizeof(int32_t) * ((size_t)v->max_depth + 2)) : NULL;
    int rc = (!m->nodes || !m->stamp || !m->states || !m->trans || !m->state_ht || !m->list || !m->work ||
              !m->out || (v && (!m->scratch || !m->walk_state)))
                 ? SS_ENOMEM
                 : node_ht_grow(m);
    if (!rc) {
        tables_reset(m);
        m->cur = initial_state(m);
        if (m->cur < 0) rc = m->err ? m->err : SS_ENOMEM;
    }
    if (rc) {
        gram_matcher_free(m);
        return rc;
    }
    *out = m;
    return 0;
}

void gram_matcher_free(struct gram_matcher *m) {
    if (!m) return;
    free(m->nodes);
    free(m->stamp);
    free(m->node_ht);
    free(m->states);
    free(m->trans);
    free(m->state_ht);
    free(m->list);
    free(m->work);
    free(m->out);
    free(m->scratch);
    free(m->key);
    if (m->own_store) gram_store_free(m->store);
    free(m->walk_state);
    free(m);
}

int gram_matcher_accept_bytes(struct gram_matcher *m, const char *s, size_t n) {
    if ((m->n_nodes > SOFT_NODES || m->n_states > SOFT_STATES) && compact(m) != 0) return SS_ETOOLONG;
    int32_t st = m->cur;
    m->err = 0;
    for (size_t i = 0; i < n && st != DEAD; i++) {
        st = step(m, st, (unsigned char)s[i]);
        if (st < 0) return m->err ? m->err : SS_ENOMEM;
    }
    if (st == DEAD) return SS_EINVAL;
    m->cur = st;
    return 0;
}

int gram_matcher_accept_token(struct gram_matcher *m, int32_t id) {
    const struct gram_vocab *v = m->v;
    if (!v || id < 0 || id >= v->n_vocab) return SS_EINVAL;
    int64_t a = v->piece_off[id], b = v->piece_off[id + 1];
    if (a == b) return SS_EINVAL; /* control tokens carry no text to match */
    return gram_matcher_accept_bytes(m, v->pieces + a, (size_t)(b - a));
}

int gram_matcher_is_complete(const struct gram_matcher *m) { return m->states[m->cur].accept; }

/* One pre-order pass over the trie from the current state. */
static int walk(struct gram_matcher *m, uint32_t *mask) {
    const struct gram_vocab *v = m->v;
    memset(mask, 0, sizeof(uint32_t) * (size_t)((v->n_vocab + 31) / 32));
    int32_t *ws = m->walk_state;
    ws[0] = m->cur;
    for (int32_t i = 1; i < v->n_nodes;) {
        int32_t from = ws[v->depth[i] - 1];
        int32_t t = m->trans[(size_t)from * 256 + v->byte[i]];
        if (t < 0) t = step(m, from, v->byte[i]);
        if (t < 0) return m->err ? m->err : SS_ENOMEM;
        if (t == DEAD) {
            i = v->end[i];
            continue;
        }
        ws[v->depth[i]] = t;
        for (int32_t id = v->tok[i]; id >= 0; id = v->tok_next[id]) mask[id >> 5] |= 1u << (id & 31);
        i++;
    }
    return 0;
}

/* qsort_r comparator: stacks (top-down positions, -1 terminated) in key. */
static int cmp_chain(const void *a, const void *b, void *ctx) {
    const int32_t *key = ctx;
    const int32_t *x = key + *(const int32_t *)a, *y = key + *(const int32_t *)b;
    for (;; x++, y++) {
        if (*x != *y) return *x < *y ? -1 : 1;
        if (*x < 0) return 0;
    }
}

/* The canonical form of state s in m->key[0..*n) (stacks as top-down
 * element positions, each ended by -1, stacks sorted) and its hash. Node ids
 * differ between matchers; positions do not. 0 or SS_ENOMEM. */
static int state_key(struct gram_matcher *m, int32_t s, int32_t *n, uint32_t *h) {
    const struct gstate *st = &m->states[s];
    int64_t total = 0;
    for (int32_t i = 0; i < st->n; i++) total += m->nodes[m->list[st->off + i]].depth + 1;
    int64_t need = 2 * total + st->n + 1;
    if (need > m->cap_key) {
        int32_t *k = realloc(m->key, sizeof(int32_t) * (size_t)need);
        if (!k) return SS_ENOMEM;
        m->key = k;
        m->cap_key = need;
    }
    int32_t *chains = m->key + total, *starts = m->key + 2 * total, w = 0;
    for (int32_t i = 0; i < st->n; i++) {
        starts[i] = w;
        for (int32_t x = m->list[st->off + i]; x != NIL; x = m->nodes[x].parent) chains[w++] = m->nodes[x].pos;
        chains[w++] = -1;
    }
    for (int32_t i = 0; i < st->n; i++) starts[i] += (int32_t)total; /* offsets from m->key */
    qsort_r(starts, (size_t)st->n, sizeof(int32_t), cmp_chain, m->key);
    uint32_t hh = 2166136261u;
    int32_t o = 0;
    for (int32_t i = 0; i < st->n; i++)
        for (const int32_t *c = m->key + starts[i];; c++) {
            /* output [0, total) and chains [total, 2 total) do not overlap */
            int32_t v = *c;
            m->key[o++] = v;
            hh = hash2(hh, (uint32_t)v);
            if (v < 0) break;
        }
    *n = o;
    *h = hh;
    return 0;
}

const uint32_t *gram_matcher_mask(struct gram_matcher *m, int *err) {
    *err = 0;
    struct gstate *st = &m->states[m->cur];
    const uint32_t *mask = st->store_slot >= 0 ? gram_store_get(m->store, st->store_slot, st->store_gen) : NULL;
    if (mask) {
        m->n_hits++;
        return mask;
    }
    if (m->n_nodes > SOFT_NODES || m->n_states > SOFT_STATES) {
        int rc = compact(m);
        if (rc) {
            *err = rc;
            return NULL;
        }
    }
    if (!gram_store_class_valid(m->store, m->cls, m->cls_gen)) m->cls = gram_store_class(m->store, m->g, &m->cls_gen);
    int32_t n;
    uint32_t h;
    int32_t slot;
    uint32_t gen;
    if (state_key(m, m->cur, &n, &h) != 0) {
        *err = SS_ENOMEM;
        return NULL;
    }
    mask = gram_store_find(m->store, m->cls, m->cls_gen, m->key, n, h, &slot, &gen);
    if (!mask) {
        m->err = 0;
        int rc = walk(m, m->scratch);
        uint32_t *dst = rc ? NULL : gram_store_insert(m->store, m->cls, m->cls_gen, m->key, n, h, &slot, &gen);
        if (!dst) {
            *err = rc ? rc : SS_ENOMEM;
            return NULL;
        }
        memcpy(dst, m->scratch, sizeof(uint32_t) * (size_t)((m->v->n_vocab + 31) / 32));
        mask = dst;
        m->n_walks++;
    } else {
        m->n_hits++;
    }
    st = &m->states[m->cur];
    st->store_slot = slot;
    st->store_gen = gen;
    return mask;
}

int gram_matcher_can_continue(struct gram_matcher *m) {
    int err;
    const uint32_t *mask = gram_matcher_mask(m, &err);
    if (!mask) return err;
    for (int32_t w = 0; w < (m->v->n_vocab + 31) / 32; w++)
        if (mask[w]) return 1;
    return 0;
}

void gram_matcher_counters(const struct gram_matcher *m, uint64_t *walks, uint64_t *hits) {
    *walks = m->n_walks;
    *hits = m->n_hits;
}

/* NOTE: masks are mostly all-zero or all-one words; a zero word is 32
 * straight stores (vectorised), only mixed words go bit by bit. */
void gram_apply_mask(float *logits, int32_t n_vocab, const uint32_t *mask) {
    const float ninf = -__builtin_inff();
    int32_t full = n_vocab / 32;
    for (int32_t w = 0; w < full; w++) {
        uint32_t bits = mask[w];
        float *x = logits + (size_t)w * 32;
        if (bits == 0xFFFFFFFFu) continue;
        if (bits == 0) {
            for (int i = 0; i < 32; i++) x[i] = ninf;
            continue;
        }
        for (int i = 0; i < 32; i++)
            if (!((bits >> i) & 1u)) x[i] = ninf;
    }
    for (int32_t i = full * 32; i < n_vocab; i++)
        if (!((mask[i >> 5] >> (i & 31)) & 1u)) logits[i] = ninf;
}

int32_t gram_mask_gather(const uint32_t *mask, int32_t n, const float *logits, int32_t cap, int32_t *ids,
                         float *vals) {
    int32_t nw = n / 32, tail = n % 32, count = 0;
    uint32_t last = tail ? mask[nw] & ((1u << tail) - 1u) : 0;
    for (int32_t w = 0; w < nw; w++) count += __builtin_popcount(mask[w]);
    count += __builtin_popcount(last);
    if (count > cap) return -1;
    int32_t k = 0;
    for (int32_t w = 0; w <= nw; w++) {
        uint32_t bits = w < nw ? mask[w] : last;
        while (bits) {
            int32_t id = w * 32 + __builtin_ctz(bits);
            bits &= bits - 1;
            ids[k] = id;
            vals[k++] = logits[id];
        }
    }
    return k;
}
