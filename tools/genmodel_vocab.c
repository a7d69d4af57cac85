/* genmodel_vocab.c - the generator's tokenizer training: an embedded English
 * text and a small byte-pair merge learner producing SentencePiece-style
 * ("llama") or byte-level BPE ("gpt2") vocabularies. The exact rules are in
 * tools/genmodel.h; everything here is deterministic (no hashing order leaks
 * into the output: choices depend on counts and bytewise comparisons only).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/ss_error.h"
#include "tools/genmodel.h"

/* Original prose written for this project (public domain). Single spaces only,
 * no newlines, a few non-ASCII characters so multi-byte pieces exist. */
static const char corpus[] =
    "The lighthouse stood at the end of the long stone pier, and every evening the keeper climbed "
    "the one hundred and twelve steps to light the lamp. She had done this for nineteen years, "
    "in rain and in wind, in the still heat of August and in the black cold of January. The town "
    "below knew the light the way it knew the church bell: nobody thought about it until the "
    "night it failed to shine. That night came in the autumn of the year the river flooded. "
    "The storm had started in the afternoon, with a low grey sky and a sea that rolled in long, "
    "heavy waves. By six o'clock the rain was falling so hard that the keeper could not see the "
    "harbour wall from her window. She put on her coat, took the brass lantern from its hook, "
    "and walked out along the pier. The wind pushed against her like a hand. At the top of the "
    "tower she found the glass of the great lamp cracked from side to side, and water running "
    "down the inside of the lens. The flame would not stay lit. She tried three times, and three "
    "times the wind came through the crack and put it out. Down in the harbour, a small fishing "
    "boat was trying to come home. The keeper could hear its engine between the gusts, a thin "
    "sound that came and went. Without the light, the boat would have to guess where the rocks "
    "were, and on a night like this a guess could cost four lives. So she did the only thing she "
    "could think of. She carried the lantern out onto the iron gallery that ran around the top "
    "of the tower, held it up as high as she could, and swung it slowly from left to right, the "
    "way her father had shown her when she was a child. Left to right, and back again. Her arms "
    "began to ache after ten minutes, and after twenty they were shaking, but she did not stop. "
    "The boat came in at a quarter past eight. The men on board said later that they had seen a "
    "small light moving in the dark, too low to be the lamp and too steady to be a star, and "
    "that they had steered toward it because there was nothing else to steer toward. When they "
    "tied up at the quay, the whole town was waiting with blankets and hot tea. The keeper came "
    "down the steps at nine, soaked through, and went to the café on the corner, where the owner "
    "gave her a bowl of soup and would not take her money. In the morning a man came from the "
    "city to look at the broken glass. He said it would take six weeks to make a new lens, and "
    "that the town should be patient. The town was not patient. The baker, the teacher, the "
    "harbour master and the two brothers who ran the hardware shop met in the back room of the "
    "café and decided that the light would not go dark again, not for six weeks and not for one "
    "night. They made a list. Every evening, two people would climb the tower with the keeper and "
    "take turns with the lantern until the sun came up. It was a naïve plan, the man from the "
    "city said, and it would never work. It worked. For forty-two nights the lantern swung from "
    "left to right above the harbour. Children asked to be put on the list, and old men who had "
    "not climbed a stair in years made it to the top, slowly, stopping to rest on every landing. "
    "People brought flasks of coffee, and sandwiches, and stories. Some nights there were more "
    "people on the gallery than there was room for, and they stood on the steps below and passed "
    "the lantern up from hand to hand. On the forty-third day the new lens arrived on a cart "
    "pulled by two horses, wrapped in straw and blankets. It took the keeper and four helpers the "
    "whole afternoon to fit it. When the sun went down, she lit the lamp, and the great beam "
    "swept out over the water again, stronger and whiter than before. The people on the pier "
    "cheered. Then, one by one, they went home, and the town went back to not thinking about "
    "the light. But the list stayed pinned to the wall of the café for a long time afterward, "
    "and if you go there today you can still see it, brown at the edges, with the names written "
    "in pencil and ink and crayon, 1,024 of them in all. Rivers are patient teachers. A river "
    "does not argue with a stone; it goes around it, or over it, or, given enough years, "
    "through it. Farmers who live by a river learn its moods the way sailors learn the sea. "
    "They know that the water rises in spring when the snow melts in the hills, and that in a "
    "dry summer it can shrink to a brown thread between the banks. They plant their fields a "
    "safe distance back, and they build their houses on the higher ground, and they still lose "
    "a crop now and then, because a river is not a machine and does not keep a calendar. Bread "
    "is another teacher. To make a simple loaf you need flour, water, salt and yeast, and a "
    "little time. Mix 500 grams of flour with 350 grams of warm water, add 10 grams of salt and "
    "a spoon of yeast, and knead the dough for ten minutes until it is smooth. Let it rise in a "
    "warm place for an hour or two, until it has doubled in size. Shape it gently, let it rise "
    "again, and bake it in a hot oven for about forty minutes. The crust should be dark and the "
    "loaf should sound hollow when you knock on the bottom. If it does not, give it five more "
    "minutes. There is no machine that will tell you exactly when the bread is ready; you learn "
    "it by making many loaves, some of them bad. The same is true of most things worth doing. "
    "You learn to write by writing, to sing by singing, and to build a boat by building a boat "
    "that leaks, and then another that leaks a little less. The old keeper used to say that the "
    "light was not really for the ships. \"The ships have maps and radios now,\" she said. \"The "
    "light is for the people on the shore, so they remember that someone is out there in the "
    "dark, and that someone is coming home.\" Whether that is true or not, the lamp still turns "
    "every night, from dusk until dawn \xe2\x80\x94 and on stormy nights, when the wind is "
    "high and the rain comes sideways off the sea, you can sometimes see a second, smaller light "
    "on the gallery below it, swinging slowly from left to right.";

const char *genmodel_corpus(void) { return corpus; }

/* ------------------------------------------------------------ token table */

/* Interned strings with ids in insertion order and a hash index. */
struct stab {
    char **s;
    int32_t n, cap;
    int32_t *h; /* id + 1, 0 empty */
    size_t hcap;
};

static uint64_t fnv(const char *s, size_t n) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

static int32_t stab_find(const struct stab *t, const char *s, size_t n) {
    if (!t->hcap)
        return -1;
    for (size_t j = fnv(s, n) & (t->hcap - 1);; j = (j + 1) & (t->hcap - 1)) {
        int32_t v = t->h[j];
        if (!v)
            return -1;
        if (strlen(t->s[v - 1]) == n && memcmp(t->s[v - 1], s, n) == 0)
            return v - 1;
    }
}

static int stab_rehash(struct stab *t, size_t ncap) {
    int32_t *h = calloc(ncap, sizeof *h);
    if (!h)
        return SS_ENOMEM;
    for (int32_t i = 0; i < t->n; i++) {
        size_t j = fnv(t->s[i], strlen(t->s[i])) & (ncap - 1);
        while (h[j])
            j = (j + 1) & (ncap - 1);
        h[j] = i + 1;
    }
    free(t->h);
    t->h = h;
    t->hcap = ncap;
    return 0;
}

/* Appends a copy of s[0..n) (must be absent). Returns its id or SS_ENOMEM. */
static int32_t stab_add(struct stab *t, const char *s, size_t n) {
    if (t->n == t->cap) {
        int32_t nc = t->cap ? t->cap * 2 : 512;
        char **p = realloc(t->s, (size_t)nc * sizeof *p);
        if (!p)
            return SS_ENOMEM;
        t->s = p;
        t->cap = nc;
    }
    if ((size_t)(t->n + 1) * 2 > t->hcap && stab_rehash(t, t->hcap ? t->hcap * 2 : 1024))
        return SS_ENOMEM;
    char *c = malloc(n + 1);
    if (!c)
        return SS_ENOMEM;
    memcpy(c, s, n);
    c[n] = 0;
    t->s[t->n] = c;
    size_t j = fnv(s, n) & (t->hcap - 1);
    while (t->h[j])
        j = (j + 1) & (t->hcap - 1);
    t->h[j] = t->n + 1;
    return t->n++;
}

static void stab_free(struct stab *t) {
    for (int32_t i = 0; i < t->n; i++)
        free(t->s[i]);
    free(t->s);
    free(t->h);
    memset(t, 0, sizeof *t);
}

/* ------------------------------------------------------------------ words */

struct word {
    int32_t *sym;
    int32_t n;
    int64_t count;
};

struct trainer {
    struct stab tok;   /* the vocabulary being built */
    struct stab wtext; /* distinct word texts -> index into words */
    struct word *w;
    int32_t n_w, cap_w;
    char **merges;
    int64_t n_merges, cap_merges;
};

static void trainer_free(struct trainer *tr) {
    stab_free(&tr->tok);
    stab_free(&tr->wtext);
    for (int32_t i = 0; i < tr->n_w; i++)
        free(tr->w[i].sym);
    free(tr->w);
    for (int64_t i = 0; i < tr->n_merges; i++)
        free(tr->merges[i]);
    free(tr->merges);
}

static size_t utf8_len(unsigned char c) { return c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4; }

/* Adds one occurrence of word s[0..n). spm: symbols are UTF-8 characters
 * (already in tok); bpe: symbols are bytes (ids 0..255). */
static int add_word(struct trainer *tr, const char *s, size_t n, int bytes) {
    int32_t i = stab_find(&tr->wtext, s, n);
    if (i >= 0) {
        tr->w[i].count++;
        return 0;
    }
    if (tr->n_w == tr->cap_w) {
        int32_t nc = tr->cap_w ? tr->cap_w * 2 : 256;
        struct word *p = realloc(tr->w, (size_t)nc * sizeof *p);
        if (!p)
            return SS_ENOMEM;
        tr->w = p;
        tr->cap_w = nc;
    }
    struct word *w = &tr->w[tr->n_w];
    w->sym = malloc(n * sizeof *w->sym);
    if (!w->sym || stab_add(&tr->wtext, s, n) < 0) {
        free(w->sym);
        return SS_ENOMEM;
    }
    w->n = 0;
    w->count = 1;
    for (size_t k = 0; k < n;) {
        size_t cl = bytes ? 1 : utf8_len((unsigned char)s[k]);
        if (k + cl > n)
            cl = n - k;
        w->sym[w->n++] = bytes ? (unsigned char)s[k] : stab_find(&tr->tok, s + k, cl);
        k += cl;
    }
    tr->n_w++;
    return 0;
}

/* -------------------------------------------------------------- merging */

struct pairmap {
    uint64_t *key; /* (left << 32 | right) + 1, 0 empty */
    int64_t *cnt;
    size_t cap;
};

static uint64_t mix64(uint64_t x) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    return x;
}

/* Counts all adjacent pairs; returns the best pair in *l,*r and its count
 * (0 if none). Ties: bytewise smallest left text, then right text. */
static int64_t best_pair(struct trainer *tr, struct pairmap *pm, int32_t *bl, int32_t *br) {
    memset(pm->key, 0, pm->cap * sizeof *pm->key);
    int64_t best = 0;
    for (int32_t i = 0; i < tr->n_w; i++) {
        const struct word *w = &tr->w[i];
        for (int32_t j = 0; j + 1 < w->n; j++) {
            if (w->sym[j] < 0 || w->sym[j + 1] < 0)
                continue; /* a character left out of the vocab never merges */
            uint64_t k = ((uint64_t)(uint32_t)w->sym[j] << 32 | (uint32_t)w->sym[j + 1]) + 1;
            size_t s = mix64(k) & (pm->cap - 1);
            while (pm->key[s] && pm->key[s] != k)
                s = (s + 1) & (pm->cap - 1);
            if (!pm->key[s]) {
                pm->key[s] = k;
                pm->cnt[s] = 0;
            }
            pm->cnt[s] += w->count;
        }
    }
    for (size_t s = 0; s < pm->cap; s++) {
        if (!pm->key[s])
            continue;
        int32_t l = (int32_t)((pm->key[s] - 1) >> 32), r = (int32_t)((pm->key[s] - 1) & 0xffffffffu);
        int64_t c = pm->cnt[s];
        int better = c > best;
        if (c == best && best > 0) {
            int d = strcmp(tr->tok.s[l], tr->tok.s[*bl]);
            better = d < 0 || (d == 0 && strcmp(tr->tok.s[r], tr->tok.s[*br]) < 0);
        }
        if (better) {
            best = c;
            *bl = l;
            *br = r;
        }
    }
    return best;
}

static void apply_merge(struct trainer *tr, int32_t l, int32_t r, int32_t id) {
    for (int32_t i = 0; i < tr->n_w; i++) {
        struct word *w = &tr->w[i];
        int32_t o = 0;
        for (int32_t j = 0; j < w->n; j++) {
            if (j + 1 < w->n && w->sym[j] == l && w->sym[j + 1] == r) {
                w->sym[o++] = id;
                j++;
            } else {
                w->sym[o++] = w->sym[j];
            }
        }
        w->n = o;
    }
}

/* Merges until tok has `target` entries or no pair occurs twice. Records
 * "left right" strings when want_merges. */
static int learn(struct trainer *tr, int32_t target, int want_merges, int64_t *n_learned) {
    size_t total = 0;
    for (int32_t i = 0; i < tr->n_w; i++)
        total += (size_t)tr->w[i].n;
    struct pairmap pm = {0};
    pm.cap = 64;
    while (pm.cap < total * 2)
        pm.cap *= 2;
    pm.key = malloc(pm.cap * sizeof *pm.key);
    pm.cnt = malloc(pm.cap * sizeof *pm.cnt);
    int rc = (pm.key && pm.cnt) ? 0 : SS_ENOMEM;
    *n_learned = 0;
    while (!rc && tr->tok.n < target) {
        int32_t l = -1, r = -1;
        if (best_pair(tr, &pm, &l, &r) < 2)
            break;
        size_t ll = strlen(tr->tok.s[l]), rl = strlen(tr->tok.s[r]);
        char *cat = malloc(ll + rl + 2);
        if (!cat) {
            rc = SS_ENOMEM;
            break;
        }
        memcpy(cat, tr->tok.s[l], ll);
        memcpy(cat + ll, tr->tok.s[r], rl + 1);
        int32_t id = stab_find(&tr->tok, cat, ll + rl);
        if (id < 0 && (id = stab_add(&tr->tok, cat, ll + rl)) >= 0)
            (*n_learned)++;
        if (id >= 0 && want_merges) {
            if (tr->n_merges == tr->cap_merges) {
                int64_t nc = tr->cap_merges ? tr->cap_merges * 2 : 256;
                char **p = realloc(tr->merges, (size_t)nc * sizeof *p);
                if (!p)
                    id = SS_ENOMEM;
                else
                    tr->merges = p, tr->cap_merges = nc;
            }
            if (id >= 0) {
                memcpy(cat, tr->tok.s[l], ll);
                cat[ll] = ' ';
                memcpy(cat + ll + 1, tr->tok.s[r], rl + 1);
                tr->merges[tr->n_merges++] = cat;
                cat = NULL;
            }
        }
        free(cat);
        if (id < 0) {
            rc = SS_ENOMEM;
            break;
        }
        apply_merge(tr, l, r, id);
    }
    free(pm.key);
    free(pm.cnt);
    return rc;
}

/* Appends "<pre><k><post>" tokens (k counting up from the next id, skipping
 * any text already present) until tok has target entries. */
static int pad(struct trainer *tr, int32_t target, const char *pre, const char *post) {
    int64_t k = tr->tok.n;
    while (tr->tok.n < target) {
        char buf[64];
        int n = snprintf(buf, sizeof buf, "%s%lld%s", pre, (long long)k++, post);
        if (stab_find(&tr->tok, buf, (size_t)n) >= 0)
            continue;
        if (stab_add(&tr->tok, buf, (size_t)n) < 0)
            return SS_ENOMEM;
    }
    return 0;
}

/* ------------------------------------------------------------- spm / bpe */

#define SPM_SPACE "\xe2\x96\x81" /* U+2581 */

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

struct ccount {
    const char *s;
    int64_t n;
};

/* most frequent first, ties bytewise */
static int cmp_ccount(const void *a, const void *b) {
    const struct ccount *x = a, *y = b;
    if (x->n != y->n)
        return x->n > y->n ? -1 : 1;
    return strcmp(x->s, y->s);
}

static int build_spm(struct trainer *tr, int32_t n_vocab, int64_t *n_learned, char *err, size_t err_len) {
    int rc = 0;
    char buf[16];
    const char *fixed[3] = {"<unk>", "<s>", "</s>"};
    for (int i = 0; i < 3 && rc >= 0; i++)
        rc = stab_add(&tr->tok, fixed[i], strlen(fixed[i]));
    for (int b = 0; b < 256 && rc >= 0; b++)
        rc = stab_add(&tr->tok, buf, (size_t)snprintf(buf, sizeof buf, "<0x%02X>", b));
    /* normalised text: "▁" + text with ' ' -> "▁" */
    size_t tl = strlen(corpus);
    char *norm = malloc(tl * 3 + 4);
    struct stab chars = {0};
    if (rc < 0 || !norm) {
        free(norm);
        return SS_ENOMEM;
    }
    size_t nl = 0;
    memcpy(norm, SPM_SPACE, 3), nl = 3;
    for (size_t i = 0; i < tl; i++) {
        if (corpus[i] == ' ')
            memcpy(norm + nl, SPM_SPACE, 3), nl += 3;
        else
            norm[nl++] = corpus[i];
    }
    /* distinct characters with counts; keep the most frequent that fit */
    int64_t *cnt = calloc(nl + 1, sizeof *cnt);
    rc = cnt ? 0 : SS_ENOMEM;
    for (size_t i = 0; i < nl && rc >= 0;) {
        size_t cl = utf8_len((unsigned char)norm[i]);
        int32_t c = stab_find(&chars, norm + i, cl);
        if (c < 0)
            c = rc = stab_add(&chars, norm + i, cl);
        if (c >= 0)
            cnt[c]++;
        i += cl;
    }
    int32_t room = n_vocab - tr->tok.n, keep = chars.n < room ? chars.n : room;
    if (rc >= 0 && room < 0) {
        snprintf(err, err_len, "gen-model: spm vocab needs at least %d tokens (asked for %d)", tr->tok.n,
                 n_vocab);
        rc = SS_EINVAL;
    }
    if (rc >= 0) {
        struct ccount *cc = malloc(((size_t)chars.n + 1) * sizeof *cc);
        const char **kept = malloc(((size_t)keep + 1) * sizeof *kept);
        if (!cc || !kept)
            rc = SS_ENOMEM;
        for (int32_t i = 0; rc >= 0 && i < chars.n; i++)
            cc[i] = (struct ccount){chars.s[i], cnt[i]};
        if (rc >= 0) {
            qsort(cc, (size_t)chars.n, sizeof *cc, cmp_ccount);
            for (int32_t i = 0; i < keep; i++)
                kept[i] = cc[i].s;
            qsort(kept, (size_t)keep, sizeof *kept, cmp_str);
            for (int32_t i = 0; i < keep && rc >= 0; i++)
                rc = stab_add(&tr->tok, kept[i], strlen(kept[i]));
        }
        free(cc);
        free(kept);
    }
    free(cnt);
    stab_free(&chars);
    if (rc < 0) {
        free(norm);
        return rc;
    }
    /* words start at each "▁" */
    for (size_t i = 0; i < nl && rc >= 0;) {
        size_t j = i + 3;
        while (j < nl && memcmp(norm + j, SPM_SPACE, 3) != 0)
            j++;
        rc = add_word(tr, norm + i, j - i, 0);
        i = j;
    }
    free(norm);
    if (rc >= 0)
        rc = learn(tr, n_vocab, 0, n_learned);
    if (rc >= 0)
        rc = pad(tr, n_vocab, SPM_SPACE "w", "");
    return rc < 0 ? rc : 0;
}

/* GPT-2 bytes_to_unicode: printable Latin-1 bytes map to themselves, the
 * other 68 to U+0100 upwards in byte order. Writes UTF-8, returns length. */
static int byte_unicode(int b, char *out) {
    int cp;
    if ((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255)) {
        cp = b;
    } else {
        int k = 0;
        for (int x = 0; x < b; x++)
            if (!((x >= 33 && x <= 126) || (x >= 161 && x <= 172) || (x >= 174 && x <= 255)))
                k++;
        cp = 256 + k;
    }
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    out[0] = (char)(0xC0 | (cp >> 6));
    out[1] = (char)(0x80 | (cp & 0x3F));
    return 2;
}

static int char_class(unsigned char c) {
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c >= 0x80)
        return 1;
    if (c >= '0' && c <= '9')
        return 2;
    return 3;
}

static int build_bpe(struct trainer *tr, int32_t n_vocab, int64_t *n_learned, char *err, size_t err_len) {
    int rc = 0;
    if (n_vocab < 258) {
        snprintf(err, err_len, "gen-model: bpe vocab needs at least 258 tokens (asked for %d)", n_vocab);
        return SS_EINVAL;
    }
    for (int b = 0; b < 256 && rc >= 0; b++) {
        char u[4];
        rc = stab_add(&tr->tok, u, (size_t)byte_unicode(b, u));
    }
    /* pre-split: optional ' ' + a run of one class; spaces before a space stay alone */
    size_t tl = strlen(corpus);
    for (size_t i = 0; i < tl && rc >= 0;) {
        size_t j = i;
        if (corpus[j] == ' ')
            j++;
        if (j < tl && corpus[j] != ' ') {
            int cls = char_class((unsigned char)corpus[j]);
            while (j < tl && corpus[j] != ' ' && char_class((unsigned char)corpus[j]) == cls)
                j++;
        }
        /* word in bytes, symbols are byte ids; texts are mapped below */
        rc = add_word(tr, corpus + i, j - i, 1);
        i = j;
    }
    if (rc >= 0)
        rc = learn(tr, n_vocab - 2, 1, n_learned);
    if (rc >= 0)
        rc = pad(tr, n_vocab - 2, "<pad", ">");
    if (rc >= 0)
        rc = stab_add(&tr->tok, "<|begin_of_text|>", 17);
    if (rc >= 0)
        rc = stab_add(&tr->tok, "<|end_of_text|>", 15);
    return rc < 0 ? rc : 0;
}

int genmodel_vocab_build(struct genmodel_vocab *v, int kind, int32_t n_vocab, char *err, size_t err_len) {
    char dummy[8];
    if (!err || !err_len)
        err = dummy, err_len = sizeof dummy;
    err[0] = 0;
    memset(v, 0, sizeof *v);
    if (kind != GENMODEL_TOK_SPM && kind != GENMODEL_TOK_BPE) {
        snprintf(err, err_len, "gen-model: unknown tokenizer kind %d", kind);
        return SS_EINVAL;
    }
    struct trainer tr = {0};
    int64_t learned = 0;
    int rc = kind == GENMODEL_TOK_SPM ? build_spm(&tr, n_vocab, &learned, err, err_len)
                                      : build_bpe(&tr, n_vocab, &learned, err, err_len);
    if (!rc && tr.tok.n != n_vocab) {
        snprintf(err, err_len, "gen-model: built %d tokens, wanted %d", tr.tok.n, n_vocab);
        rc = SS_EINTERNAL;
    }
    if (!rc) {
        v->types = malloc((size_t)n_vocab * sizeof *v->types);
        v->scores = kind == GENMODEL_TOK_SPM ? malloc((size_t)n_vocab * sizeof *v->scores) : NULL;
        if (!v->types || (kind == GENMODEL_TOK_SPM && !v->scores))
            rc = SS_ENOMEM;
    }
    if (rc) {
        if (rc == SS_ENOMEM)
            snprintf(err, err_len, "gen-model: out of memory building the vocabulary");
        trainer_free(&tr);
        genmodel_vocab_free(v);
        return rc;
    }
    for (int32_t i = 0; i < n_vocab; i++) {
        if (kind == GENMODEL_TOK_SPM) {
            v->types[i] = i == 0 ? 2 : i < 3 ? 3 : i < 259 ? 6 : 1;
            v->scores[i] = i < 259 ? 0.0f : -(float)i;
        } else {
            v->types[i] = i >= n_vocab - 2 ? 3 : 1;
        }
    }
    v->n = n_vocab;
    v->tokens = tr.tok.s; /* hand over the strings */
    tr.tok.s = NULL;
    tr.tok.n = 0;
    v->merges = tr.merges;
    v->n_merges = tr.n_merges;
    tr.merges = NULL;
    tr.n_merges = 0;
    v->n_learned = learned;
    v->bos = kind == GENMODEL_TOK_SPM ? 1 : n_vocab - 2;
    v->eos = kind == GENMODEL_TOK_SPM ? 2 : n_vocab - 1;
    v->unk = kind == GENMODEL_TOK_SPM ? 0 : -1;
    trainer_free(&tr);
    return 0;
}

void genmodel_vocab_free(struct genmodel_vocab *v) {
    if (!v)
        return;
    for (int32_t i = 0; v->tokens && i < v->n; i++)
        free(v->tokens[i]);
    free(v->tokens);
    for (int64_t i = 0; v->merges && i < v->n_merges; i++)
        free(v->merges[i]);
    free(v->merges);
    free(v->scores);
    free(v->types);
    memset(v, 0, sizeof *v);
}
