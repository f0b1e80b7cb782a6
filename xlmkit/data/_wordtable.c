/* The word table of xlmkit.data.wordmemo, in C: word -> SentencePiece ids, exact (words compared byte
 * for byte), bounded. The Python side (CompiledWordMemo) encodes the missing words with SentencePiece;
 * this file only splits, looks up, stores and copies ids. Per chunk:
 *
 *   t = WordTable(max_words, max_ids, max_word_bytes, group_bytes)
 *   blob = t.lookup(data, n_lines)   # data: n_lines lines joined by '\n', words by single spaces.
 *                                    # -> the distinct words not in the table (each <= max_word_bytes),
 *                                    # joined by ' ', a '\n' closing each group of >= group_bytes; they
 *                                    # are now pending. ValueError if data does not hold n_lines lines.
 *   t.fill_groups(lists, starts_word)# SentencePiece's ids of each group (lists of int), split into its
 *                                    # words where starts_word[id]; False, nothing stored, if they do not split
 *   t.fill(ids, counts)              # or: int32 ids and int64 ids per word of the pending words, blob order
 *   flat, lengths, bad = t.emit(eos) # of the last lookup's data: int32 ids (eos after each line unless
 *                                    # eos < 0), int64 ids per line, the lines left to the caller
 *
 * A line holding an empty word (two spaces, a space at its edge) or a word over max_word_bytes is
 * "bad": no ids are written for it (length 0) and the caller encodes it otherwise. Past max_words
 * words or max_ids ids the table starts empty at the next lookup (the output does not depend on it).
 * Speed comes from memory access: a word's bytes (up to 12) and ids (up to 2) sit in its 32-byte slot,
 * the slots of the words ahead are prefetched, and each word is looked up once per chunk.
 *
 * Also here: hash_lines (the dedup hash of each line) and hashset_add (HashSet64's insert).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define PENDING UINT16_MAX
#define MAX_WORD_IDS (UINT16_MAX - 1)
#define NO_SLOT UINT32_MAX
#define INLINE_BYTES 12
#define INLINE_IDS 2
#define AHEAD 16 /* words looked ahead for prefetching */

/* 32 bytes, two to a 64-byte cache line (the table is aligned to 64): a probe of a word of up to 12
 * bytes with up to 2 ids touches one line. (48-byte slots straddled two lines half of the time.) */
typedef struct {
    uint64_t hash; /* 0: empty slot */
    uint16_t word_len;
    uint16_t n_ids; /* PENDING until fill() */
    union {
        int32_t ids[INLINE_IDS]; /* n_ids <= INLINE_IDS */
        uint32_t ids_off; /* else where they start in ids */
    };
    union {
        unsigned char head[INLINE_BYTES]; /* word_len <= INLINE_BYTES */
        uint32_t word_off; /* else where it starts in words */
    };
} Entry;
_Static_assert(sizeof(Entry) == 32, "two slots to a cache line");

typedef struct {
    PyObject_HEAD
    Entry *table;
    size_t cap, size, max_words;
    char *words;
    size_t words_len, words_cap;
    int32_t *ids;
    size_t n_ids, ids_cap, max_ids;
    size_t max_word_bytes, group_bytes;
    /* the last lookup: its data and, per word, where it starts, its length, its slot */
    PyObject *data;
    Py_ssize_t n_lines;
    uint32_t *w_start, *w_len, *w_slot;
    uint8_t *w_ends_line;
    size_t n_words, w_cap;
    size_t *pending; /* word indices of the pending words, blob order */
    size_t n_pending, pending_cap;
    size_t *group_words; /* words per group of the last blob */
    size_t n_groups, groups_cap;
    int32_t *scratch_ids; /* fill_groups: the ids and counts checked before any is stored */
    int64_t *scratch_counts;
    size_t scratch_ids_cap, scratch_counts_cap;
} WordTable;

/* The hash of a word (the table's key) and of a line (dedup, xlmkit.data.text.line_hashes): MurmurHash3's
 * 64-bit mixing over 8-byte lanes and its finaliser. Not cryptographic (blake2b, the dedup fallback,
 * is); for two given lines a collision has a chance of ~2^-64. Never 0: 0 marks an empty slot. */
static inline uint64_t rotl64(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }

static inline uint64_t fmix64(uint64_t k) {
    k ^= k >> 33; k *= 0xff51afd7ed558ccdULL;
    k ^= k >> 33; k *= 0xc4ceb9fe1a85ec53ULL;
    return k ^ (k >> 33);
}

static uint64_t hash_line(const unsigned char *p, size_t n) {
    const uint64_t c1 = 0x87c37b91114253d5ULL, c2 = 0x4cf5ad432745937fULL;
    uint64_t h = 0x9e3779b97f4a7c15ULL, v;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        memcpy(&v, p + i, 8);
        h ^= rotl64(v * c1, 31) * c2;
        h = rotl64(h, 27) * 5 + 0x52dce729;
    }
    v = 0;
    memcpy(&v, p + i, n - i);
    h ^= rotl64(v * c1, 31) * c2;
    h = fmix64(h ^ (uint64_t)n);
    return h ? h : 1;
}

static int grow(void **buf, size_t *cap, size_t need, size_t item) {
    if (need <= *cap) return 0;
    size_t c = *cap ? *cap : 1024;
    while (c < need) {
        if (c > SIZE_MAX / 2 / item) { PyErr_NoMemory(); return -1; }
        c *= 2;
    }
    void *p = realloc(*buf, c * item);
    if (!p) { PyErr_NoMemory(); return -1; }
    *buf = p;
    *cap = c;
    return 0;
}

static Entry *new_slots(size_t n) { /* zeroed, cache-line aligned */
    void *p = NULL;
    if (n > SIZE_MAX / sizeof(Entry) || posix_memalign(&p, 64, n * sizeof(Entry)) != 0) return NULL;
    return memset(p, 0, n * sizeof(Entry));
}

static int reset(WordTable *t) {
    free(t->table);
    t->cap = 1 << 16;
    t->table = new_slots(t->cap);
    if (!t->table) { PyErr_NoMemory(); return -1; }
    t->size = t->words_len = t->n_ids = t->n_pending = 0;
    return 0;
}

static inline const unsigned char *entry_word(const WordTable *t, const Entry *e) {
    return e->word_len <= INLINE_BYTES ? e->head : (const unsigned char *)t->words + e->word_off;
}

/* The slot of word w: where it is (*found = 1) or the empty slot where it would go. */
static inline size_t probe(const WordTable *t, const unsigned char *w, size_t n, uint64_t h, int *found) {
    size_t mask = t->cap - 1, s = (size_t)h & mask;
    for (;;) {
        const Entry *e = &t->table[s];
        if (e->hash == 0) { *found = 0; return s; }
        if (e->hash == h && e->word_len == n && memcmp(entry_word(t, e), w, n) == 0) { *found = 1; return s; }
        s = (s + 1) & mask;
    }
}

static int rehash(WordTable *t, size_t cap) {
    Entry *old = t->table;
    size_t old_cap = t->cap;
    t->table = new_slots(cap);
    if (!t->table) { t->table = old; PyErr_NoMemory(); return -1; }
    t->cap = cap;
    for (size_t i = 0; i < old_cap; i++) {
        if (!old[i].hash) continue;
        size_t s = (size_t)old[i].hash & (cap - 1);
        while (t->table[s].hash) s = (s + 1) & (cap - 1);
        t->table[s] = old[i];
    }
    free(old);
    return 0;
}

static int WordTable_init(WordTable *t, PyObject *args, PyObject *kw) {
    Py_ssize_t max_words, max_ids, max_word_bytes, group_bytes;
    (void)kw;
    if (!PyArg_ParseTuple(args, "nnnn", &max_words, &max_ids, &max_word_bytes, &group_bytes)) return -1;
    if (max_words < 1 || max_ids < 1 || max_word_bytes < 1 || max_word_bytes > 65535 || group_bytes < 1) {
        PyErr_SetString(PyExc_ValueError, "WordTable: sizes must be >= 1, max_word_bytes <= 65535");
        return -1;
    }
    Py_CLEAR(t->data); /* __init__ called again: the last lookup's slots are gone with the table */
    t->max_words = (size_t)max_words;
    t->max_ids = (size_t)max_ids < UINT32_MAX / 2 ? (size_t)max_ids : UINT32_MAX / 2; /* ids_off is uint32 */
    t->max_word_bytes = (size_t)max_word_bytes;
    t->group_bytes = (size_t)group_bytes;
    return reset(t); /* a small table, grown as words come: memory follows the distinct words seen */
}

static void WordTable_dealloc(WordTable *t) {
    Py_XDECREF(t->data);
    free(t->table);
    free(t->words);
    free(t->ids);
    free(t->pending);
    free(t->group_words);
    free(t->scratch_ids);
    free(t->scratch_counts);
    free(t->w_start);
    free(t->w_len);
    free(t->w_slot);
    free(t->w_ends_line);
    Py_TYPE(t)->tp_free((PyObject *)t);
}

/* Split data into words (start, length, whether it ends its line); -1 if it does not hold n_lines. */
static int split_words(WordTable *t, const unsigned char *d, size_t n, Py_ssize_t n_lines) {
    size_t lines = 0, k = 0;
    t->n_words = 0;
    if (n_lines == 0 && n == 0) return 0;
    for (size_t i = 0; i <= n;) {
        size_t j = i;
        while (j < n && d[j] != ' ' && d[j] != '\n') j++;
        if (k + 1 > t->w_cap) {
            size_t c = t->w_cap;
            if (grow((void **)&t->w_start, &c, k + 1, sizeof(uint32_t)) < 0) return -1;
            c = t->w_cap;
            if (grow((void **)&t->w_len, &c, k + 1, sizeof(uint32_t)) < 0) return -1;
            c = t->w_cap;
            if (grow((void **)&t->w_slot, &c, k + 1, sizeof(uint32_t)) < 0) return -1;
            c = t->w_cap;
            if (grow((void **)&t->w_ends_line, &c, k + 1, 1) < 0) return -1;
            t->w_cap = c;
        }
        t->w_start[k] = (uint32_t)i;
        t->w_len[k] = (uint32_t)(j - i);
        t->w_ends_line[k] = (j >= n || d[j] == '\n');
        lines += t->w_ends_line[k];
        k++;
        i = j + 1;
    }
    t->n_words = k;
    if (lines != (size_t)n_lines) {
        PyErr_Format(PyExc_ValueError, "%zd lines expected, %zu found (a line holds '\\n'?)", n_lines, lines);
        return -1;
    }
    return 0;
}

static inline int storable(const WordTable *t, size_t k) {
    return t->w_len[k] > 0 && t->w_len[k] <= t->max_word_bytes;
}

/* Find every word's slot; insert the missing ones as pending. -1 on error, 1 if the table grew (the
 * slots found before that moved), else 0. */
static int find_all(WordTable *t, const unsigned char *d) {
    int grew = 0;
    size_t mask = t->cap - 1;
    uint64_t hashes[AHEAD] = {0}; /* a word that is not storable leaves its entry unset, and unread */
    size_t n = t->n_words;
    for (size_t k = 0; k < n && k < AHEAD; k++)
        if (storable(t, k)) {
            hashes[k] = hash_line(d + t->w_start[k], t->w_len[k]);
            __builtin_prefetch(&t->table[hashes[k] & mask]);
        }
    for (size_t k = 0; k < n; k++) {
        uint64_t h = hashes[k % AHEAD];
        size_t ahead = k + AHEAD;
        if (ahead < n && storable(t, ahead)) {
            hashes[ahead % AHEAD] = hash_line(d + t->w_start[ahead], t->w_len[ahead]);
            __builtin_prefetch(&t->table[hashes[ahead % AHEAD] & (t->cap - 1)]);
        }
        if (!storable(t, k)) { t->w_slot[k] = NO_SLOT; continue; }
        const unsigned char *w = d + t->w_start[k];
        size_t len = t->w_len[k];
        int found;
        size_t s = probe(t, w, len, h, &found);
        if (!found) {
            if (2 * (t->size + 1) > t->cap) { /* at most half full */
                if (rehash(t, 2 * t->cap) < 0) return -1;
                grew = 1;
                s = probe(t, w, len, h, &found);
            }
            /* room first, so that a failed allocation leaves no half-made entry */
            if (grow((void **)&t->pending, &t->pending_cap, t->n_pending + 1, sizeof(size_t)) < 0) return -1;
            if (len > INLINE_BYTES && grow((void **)&t->words, &t->words_cap, t->words_len + len, 1) < 0) return -1;
            Entry *e = &t->table[s];
            e->hash = h;
            e->word_len = (uint32_t)len;
            e->n_ids = PENDING;
            if (len <= INLINE_BYTES) {
                memcpy(e->head, w, len);
            } else {
                memcpy(t->words + t->words_len, w, len);
                e->word_off = (uint32_t)t->words_len;
                t->words_len += len;
            }
            t->size++;
            t->pending[t->n_pending++] = k;
        }
        t->w_slot[k] = (uint32_t)s;
    }
    return grew;
}

static PyObject *WordTable_lookup(WordTable *t, PyObject *args) {
    PyObject *data;
    Py_ssize_t n_lines;
    if (!PyArg_ParseTuple(args, "Sn", &data, &n_lines)) return NULL;
    const unsigned char *d = (const unsigned char *)PyBytes_AS_STRING(data);
    size_t n = (size_t)PyBytes_GET_SIZE(data);
    Py_CLEAR(t->data);
    if (!t->table) { PyErr_SetString(PyExc_ValueError, "WordTable not initialised"); return NULL; }
    /* word offsets are uint32, and so are a slot's word_off and ids_off: with the stored words and ids
     * below 2 GiB when a lookup starts (else the table starts empty) and this chunk adding at most its
     * own size of each (a piece is at least a byte), neither can pass 4 GiB. The caller takes the line path. */
    if (n > UINT32_MAX / 2) {
        PyErr_SetString(PyExc_ValueError, "lookup: data over 2 GiB");
        return NULL;
    }
    if (n_lines < 0 || split_words(t, d, n, n_lines) < 0) {
        if (n_lines < 0) PyErr_SetString(PyExc_ValueError, "n_lines must be >= 0");
        return NULL;
    }
    if (t->n_pending || t->size > t->max_words || t->n_ids > t->max_ids || t->words_len > UINT32_MAX / 2)
        if (reset(t) < 0) return NULL; /* full, or fill() never came: start empty */
    int grew = find_all(t, d);
    if (grew < 0) return NULL;
    if (grew) /* the slots found before the table grew moved: find them again (no word is missing now) */
        for (size_t k = 0; k < t->n_words; k++) {
            if (t->w_slot[k] == NO_SLOT) continue;
            int found;
            const unsigned char *w = d + t->w_start[k];
            t->w_slot[k] = (uint32_t)probe(t, w, t->w_len[k], hash_line(w, t->w_len[k]), &found);
        }
    size_t out_len = 0, group_len = 0;
    for (size_t p = 0; p < t->n_pending; p++) out_len += t->w_len[t->pending[p]] + 1;
    PyObject *blob = PyBytes_FromStringAndSize(NULL, out_len ? (Py_ssize_t)out_len - 1 : 0);
    if (!blob) return NULL;
    char *out = PyBytes_AS_STRING(blob);
    size_t pos = 0;
    t->n_groups = 0;
    if (grow((void **)&t->group_words, &t->groups_cap, t->n_pending + 1, sizeof(size_t)) < 0) {
        Py_DECREF(blob);
        return NULL;
    }
    for (size_t p = 0; p < t->n_pending; p++) {
        size_t k = t->pending[p], len = t->w_len[k];
        if (p > 0) { /* the separator before this word: a group of >= group_bytes ends with '\n' */
            out[pos++] = group_len >= t->group_bytes ? '\n' : ' ';
            if (out[pos - 1] == '\n') group_len = 0;
        }
        if (group_len == 0) t->group_words[t->n_groups++] = 0;
        t->group_words[t->n_groups - 1]++;
        memcpy(out + pos, d + t->w_start[k], len);
        pos += len;
        group_len += len + 1;
    }
    Py_INCREF(data);
    t->data = data;
    t->n_lines = n_lines;
    return blob;
}

static inline int64_t count_at(const char *p, size_t k) {
    int64_t v;
    memcpy(&v, p + k * sizeof(int64_t), sizeof v);
    return v;
}

/* Store the checked ids of the pending words (src: their int32 ids one after another, counts: int64
 * ids per word, both possibly unaligned, `total` ids in all); they are no longer pending. The room
 * for the long ones is made first, so that a failed allocation stores nothing. */
static int store_ids(WordTable *t, const char *src, const char *counts, size_t n_words, size_t total) {
    if (grow((void **)&t->ids, &t->ids_cap, t->n_ids + total, sizeof(int32_t)) < 0) return -1;
    for (size_t w = 0; w < n_words; w++) {
        size_t c = (size_t)count_at(counts, w);
        Entry *e = &t->table[t->w_slot[t->pending[w]]];
        e->n_ids = (uint32_t)c;
        if (c <= INLINE_IDS) {
            memcpy(e->ids, src, c * sizeof(int32_t));
        } else {
            memcpy(t->ids + t->n_ids, src, c * sizeof(int32_t));
            e->ids_off = (uint32_t)t->n_ids;
            t->n_ids += c;
        }
        src += c * sizeof(int32_t);
    }
    t->n_pending = t->n_groups = 0;
    return 0;
}

static PyObject *WordTable_fill(WordTable *t, PyObject *args) {
    Py_buffer ids, counts;
    if (!PyArg_ParseTuple(args, "y*y*", &ids, &counts)) return NULL;
    PyObject *result = NULL;
    size_t n_words = (size_t)counts.len / sizeof(int64_t), n_new = (size_t)ids.len / sizeof(int32_t), total = 0;
    const char *c_bytes = counts.buf, *src = ids.buf; /* read with memcpy: buffers need not be aligned */
    if (ids.len % (Py_ssize_t)sizeof(int32_t) || counts.len % (Py_ssize_t)sizeof(int64_t)) {
        PyErr_SetString(PyExc_ValueError, "fill: ids must be int32 and counts int64");
        goto done;
    }
    if (!t->data || n_words != t->n_pending) {
        PyErr_Format(PyExc_ValueError, "fill: %zu counts for %zu pending words", n_words, t->data ? t->n_pending : 0);
        goto done;
    }
    size_t k = 0;
    for (; k < n_words; k++) {
        if (count_at(c_bytes, k) < 1) { PyErr_SetString(PyExc_ValueError, "fill: a word with no ids"); goto done; }
        if (count_at(c_bytes, k) > MAX_WORD_IDS) { PyErr_SetString(PyExc_ValueError, "fill: a word with over 65534 ids"); goto done; }
        if ((uint64_t)count_at(c_bytes, k) > n_new - total) break; /* more ids than given (and no wrap-around) */
        total += (size_t)count_at(c_bytes, k);
    }
    if (k < n_words || total != n_new) {
        PyErr_Format(PyExc_ValueError, "fill: the counts do not sum to the %zu ids given", n_new);
        goto done;
    }
    if (store_ids(t, src, c_bytes, n_words, total) < 0) goto done;
    result = Py_None;
    Py_INCREF(result);
done:
    PyBuffer_Release(&ids);
    PyBuffer_Release(&counts);
    return result;
}

/* fill() from SentencePiece's own output for the blob's groups (a list with a list of int ids per group):
 * each group's ids split into its words where a piece starts a word (starts_word[id] != 0), so that no
 * array is built in Python. False, nothing stored, where a group's pieces do not split into its
 * words (the caller encodes word by word and calls fill). */
static PyObject *WordTable_fill_groups(WordTable *t, PyObject *args) {
    PyObject *groups;
    Py_buffer sw;
    if (!PyArg_ParseTuple(args, "O!y*", &PyList_Type, &groups, &sw)) return NULL;
    PyObject *result = NULL;
    const unsigned char *starts_word = sw.buf;
    size_t n_pieces = (size_t)sw.len, n_ids = 0, n_words = 0;
    if (!t->data || (size_t)PyList_GET_SIZE(groups) != t->n_groups) {
        PyErr_Format(PyExc_ValueError, "fill_groups: %zd groups for %zu", PyList_GET_SIZE(groups), t->data ? t->n_groups : 0);
        goto done;
    }
    for (size_t g = 0; g < t->n_groups; g++) {
        PyObject *ids = PyList_GET_ITEM(groups, g);
        if (!PyList_Check(ids)) { PyErr_SetString(PyExc_TypeError, "fill_groups: a group's ids must be a list"); goto done; }
        size_t n = (size_t)PyList_GET_SIZE(ids), words = 0;
        if (grow((void **)&t->scratch_ids, &t->scratch_ids_cap, n_ids + n, sizeof(int32_t)) < 0) goto done;
        if (grow((void **)&t->scratch_counts, &t->scratch_counts_cap, n_words + t->group_words[g], sizeof(int64_t)) < 0) goto done;
        for (size_t i = 0; i < n; i++) {
            PyObject *item = PyList_GET_ITEM(ids, i);
            if (!PyLong_Check(item)) { PyErr_SetString(PyExc_TypeError, "fill_groups: ids must be int"); goto done; }
            long id = PyLong_AsLong(item); /* an int (or subclass): runs no Python code */
            if (id == -1 && PyErr_Occurred()) goto done;
            if (id < 0 || (size_t)id >= n_pieces) { PyErr_SetString(PyExc_ValueError, "fill_groups: an id out of range"); goto done; }
            if (starts_word[id]) {
                if (++words > t->group_words[g]) break;
                t->scratch_counts[n_words + words - 1] = 0;
            } else if (words == 0) {
                break; /* the group's first piece does not start a word */
            }
            t->scratch_ids[n_ids + i] = (int32_t)id;
            if (++t->scratch_counts[n_words + words - 1] > MAX_WORD_IDS) {
                PyErr_SetString(PyExc_ValueError, "fill_groups: a word with over 65534 ids");
                goto done;
            }
        }
        if (words != t->group_words[g]) {
            result = Py_False; /* pieces across words (a '▁' inside an unknown piece, say) */
            Py_INCREF(result);
            goto done;
        }
        n_ids += n;
        n_words += words;
    }
    if (store_ids(t, (const char *)t->scratch_ids, (const char *)t->scratch_counts, n_words, n_ids) < 0) goto done;
    result = Py_True;
    Py_INCREF(result);
done:
    PyBuffer_Release(&sw);
    return result;
}

static PyObject *WordTable_emit(WordTable *t, PyObject *args) {
    long long eos;
    if (!PyArg_ParseTuple(args, "L", &eos)) return NULL;
    if (eos > INT32_MAX) { PyErr_SetString(PyExc_ValueError, "emit: eos must fit int32"); return NULL; }
    if (!t->data || t->n_pending) {
        PyErr_SetString(PyExc_ValueError, "emit: no lookup, or its missing words not filled");
        return NULL;
    }
    size_t total = 0, n_lines = (size_t)t->n_lines;
    for (size_t k = 0; k < t->n_words; k++)
        if (t->w_slot[k] != NO_SLOT) total += t->table[t->w_slot[k]].n_ids;
    total += eos >= 0 ? n_lines : 0;
    PyObject *flat_b = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(total * sizeof(int32_t)));
    PyObject *len_b = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(n_lines * sizeof(int64_t)));
    PyObject *bad = PyList_New(0);
    PyObject *result = NULL;
    if (!flat_b || !len_b || !bad) goto done;
    int32_t *flat = (int32_t *)PyBytes_AS_STRING(flat_b);
    int64_t *lengths = (int64_t *)PyBytes_AS_STRING(len_b);
    size_t used = 0, line = 0, line_start = 0;
    int line_bad = 0;
    for (size_t k = 0; k < t->n_words; k++) {
        if (k + AHEAD < t->n_words && t->w_slot[k + AHEAD] != NO_SLOT) __builtin_prefetch(&t->table[t->w_slot[k + AHEAD]]);
        if (t->w_slot[k] == NO_SLOT) {
            line_bad = 1;
        } else if (!line_bad) {
            const Entry *e = &t->table[t->w_slot[k]];
            memcpy(flat + used, e->n_ids <= INLINE_IDS ? e->ids : t->ids + e->ids_off, e->n_ids * sizeof(int32_t));
            used += e->n_ids;
        }
        if (t->w_ends_line[k]) {
            if (line_bad) {
                used = line_start;
                PyObject *i = PyLong_FromSize_t(line);
                if (!i || PyList_Append(bad, i) < 0) { Py_XDECREF(i); goto done; }
                Py_DECREF(i);
            } else if (eos >= 0) {
                flat[used++] = (int32_t)eos;
            }
            lengths[line++] = (int64_t)(used - line_start);
            line_start = used;
            line_bad = 0;
        }
    }
    if (_PyBytes_Resize(&flat_b, (Py_ssize_t)(used * sizeof(int32_t))) < 0) goto done;
    result = PyTuple_Pack(3, flat_b, len_b, bad);
done:
    Py_XDECREF(flat_b);
    Py_XDECREF(len_b);
    Py_XDECREF(bad);
    Py_XDECREF(t->data);
    t->data = NULL;
    return result;
}

static Py_ssize_t WordTable_len(WordTable *t) { return (Py_ssize_t)t->size; }

static PyObject *hash_lines(PyObject *self, PyObject *args) {
    Py_buffer buf;
    Py_ssize_t n_lines;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*n", &buf, &n_lines)) return NULL;
    PyObject *out = NULL;
    const unsigned char *d = buf.buf;
    size_t n = (size_t)buf.len, line = 0, start = 0;
    if (n_lines < 1 || (size_t)n_lines > n + 1) { /* n bytes hold at most n + 1 lines */
        PyErr_Format(PyExc_ValueError, "hash_lines: %zd lines expected, data holds another number", n_lines);
        goto done;
    }
    out = PyBytes_FromStringAndSize(NULL, n_lines * (Py_ssize_t)sizeof(uint64_t));
    if (!out) goto done;
    uint64_t *h = (uint64_t *)PyBytes_AS_STRING(out);
    for (size_t i = 0; i <= n; i++) {
        if (i < n && d[i] != '\n') continue;
        if (line == (size_t)n_lines) break;
        h[line++] = hash_line(d + start, i - start);
        start = i + 1;
    }
    if (line != (size_t)n_lines || start <= n) {
        Py_CLEAR(out);
        PyErr_Format(PyExc_ValueError, "hash_lines: %zd lines expected, data holds another number", n_lines);
    }
done:
    PyBuffer_Release(&buf);
    return out;
}

/* The insert of xlmkit.data.text.HashSet64: table, a writable array of uint64 (a power of two long, 0
 * = empty slot, linear probing) holding `size` keys; the non-zero hashes inserted in order. -> (uint8
 * per hash: 1 where it was not in the table before, nor earlier in the batch; how many were new).
 * The caller keeps the table at most half full (checked here: a full table would never end a probe). */
static PyObject *hashset_add(PyObject *self, PyObject *args) {
    Py_buffer table, hashes;
    Py_ssize_t size;
    (void)self;
    if (!PyArg_ParseTuple(args, "w*ny*", &table, &size, &hashes)) return NULL;
    PyObject *out = NULL;
    size_t cap = (size_t)table.len / sizeof(uint64_t), n = (size_t)hashes.len / sizeof(uint64_t), added = 0;
    if (table.len % (Py_ssize_t)sizeof(uint64_t) || hashes.len % (Py_ssize_t)sizeof(uint64_t) || cap == 0
        || (cap & (cap - 1)) || ((uintptr_t)table.buf % sizeof(uint64_t))) {
        PyErr_SetString(PyExc_ValueError, "hashset_add: the table must be an aligned uint64 array of a power-of-two "
                                          "length and the hashes uint64");
        goto done;
    }
    if (size < 0 || (size_t)size > cap / 2 || n > cap / 2 - (size_t)size) {
        PyErr_SetString(PyExc_ValueError, "hashset_add: the table would be more than half full");
        goto done;
    }
    const char *h_bytes = hashes.buf;
    for (size_t i = 0; i < n; i++) { /* checked before any is inserted: an error leaves the table as it was */
        uint64_t h;
        memcpy(&h, h_bytes + i * sizeof h, sizeof h);
        if (h == 0) {
            PyErr_SetString(PyExc_ValueError, "hashset_add: 0 is not a valid hash (it marks an empty slot)");
            goto done;
        }
    }
    out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)n);
    if (!out) goto done;
    uint64_t *slots = table.buf, mask = cap - 1;
    unsigned char *is_new = (unsigned char *)PyBytes_AS_STRING(out);
    for (size_t i = 0; i < n; i++) {
        uint64_t h, ahead;
        memcpy(&h, h_bytes + i * sizeof h, sizeof h);
        if (i + AHEAD < n) {
            memcpy(&ahead, h_bytes + (i + AHEAD) * sizeof ahead, sizeof ahead);
            __builtin_prefetch(&slots[ahead & mask]);
        }
        size_t s = (size_t)(h & mask);
        while (slots[s] != 0 && slots[s] != h) s = (s + 1) & mask;
        is_new[i] = slots[s] == 0;
        if (is_new[i]) { slots[s] = h; added++; }
    }
    PyObject *r = Py_BuildValue("(Nn)", out, (Py_ssize_t)added);
    out = r;
done:
    PyBuffer_Release(&table);
    PyBuffer_Release(&hashes);
    return out;
}

/* The cleaning scans of xlmkit.data.text.clean_lines in one pass over a chunk's bytes (lines joined by
 * '\n'): the lines holding one of the byte sequences `odd` (the UTF-8 of the characters cleaning
 * removes or turns into spaces), and whether a space starts or ends a line or follows another.
 * -> (int64 line indices, ascending, as bytes; that flag). */
static int cmp_u32(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

/* From d[i], up to d[end] (excluded; d[end] is readable): count line breaks and look for a space
 * followed by a space or a line break, or a line break followed by a space, until a byte of class
 * != 0. -> its index, or end. No branch but the loop's: a space every ~6 bytes would defeat branch
 * prediction, and locals stay in registers (~0.5 ns a byte). */
static __attribute__((noinline)) size_t scan_plain(const unsigned char *d, size_t i, size_t end, const unsigned char *cls, size_t *line,
                         int *spaces) {
    size_t lines = 0;
    unsigned sp = 0;
    for (; i < end; i++) {
        unsigned char c = d[i], next = d[i + 1];
        sp |= ((c == ' ') & ((next == ' ') | (next == '\n'))) | ((c == '\n') & (next == ' '));
        lines += c == '\n';
        if (cls[c]) break;
    }
    *line += lines;
    *spaces |= (int)sp;
    return i;
}

static PyObject *odd_lines(PyObject *self, PyObject *args) {
    Py_buffer buf;
    PyObject *odd;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*O!", &buf, &PyTuple_Type, &odd)) return NULL;
    PyObject *result = NULL, *out = NULL;
    unsigned char single[256] = {0}, lead[256] = {0};
    uint32_t codes[3][256]; /* the 2-, 3- and 4-byte sequences as big-endian numbers, sorted */
    size_t n_codes[3] = {0, 0, 0};
    Py_ssize_t n_odd = PyTuple_GET_SIZE(odd);
    for (Py_ssize_t k = 0; k < n_odd; k++) {
        PyObject *seq = PyTuple_GET_ITEM(odd, k);
        if (!PyBytes_Check(seq) || PyBytes_GET_SIZE(seq) < 1 || PyBytes_GET_SIZE(seq) > 4
            || PyBytes_AS_STRING(seq)[0] == '\n' || PyBytes_AS_STRING(seq)[0] == ' ') {
            PyErr_SetString(PyExc_ValueError, "odd_lines: each sequence must be 1 to 4 bytes, not starting with '\\n' or ' '");
            goto done;
        }
        const unsigned char *b = (const unsigned char *)PyBytes_AS_STRING(seq);
        size_t len = (size_t)PyBytes_GET_SIZE(seq);
        if (len == 1) { single[b[0]] = 1; continue; }
        if (n_codes[len - 2] == 256) { PyErr_SetString(PyExc_ValueError, "odd_lines: over 256 sequences of one length"); goto done; }
        uint32_t code = 0;
        for (size_t j = 0; j < len; j++) code = code << 8 | b[j];
        codes[len - 2][n_codes[len - 2]++] = code;
        lead[b[0]] = 1;
    }
    for (int L = 0; L < 3; L++) qsort(codes[L], n_codes[L], sizeof(uint32_t), cmp_u32);
    const unsigned char *d = buf.buf;
    size_t n = (size_t)buf.len, line = 0, n_found = 0, cap = 0;
    int64_t *found = NULL;
    int spaces = n > 0 && (d[0] == ' ' || d[n - 1] == ' ');
    unsigned char cls[256]; /* 1: an odd byte, 2: the first byte of an odd sequence */
    for (int c = 0; c < 256; c++) cls[c] = single[c] ? 1 : lead[c] ? 2 : 0;
    for (size_t i = 0; i < n; i++) {
        if (i + 1 < n) i = scan_plain(d, i, n - 1, cls, &line, &spaces);
        if (i == n - 1) line += d[i] == '\n'; /* the last byte: no byte after it (its space is counted above) */
        if (!cls[d[i]]) continue;
        int hit = cls[d[i]] == 1;
        for (size_t len = 2; !hit && len <= 4 && i + len <= n; len++) {
            uint32_t code = 0;
            for (size_t j = 0; j < len; j++) code = code << 8 | d[i + j];
            hit = bsearch(&code, codes[len - 2], n_codes[len - 2], sizeof(uint32_t), cmp_u32) != NULL;
        }
        if (!hit || (n_found && found[n_found - 1] == (int64_t)line)) continue;
        if (grow((void **)&found, &cap, n_found + 1, sizeof(int64_t)) < 0) { free(found); goto done; }
        found[n_found++] = (int64_t)line;
    }
    out = PyBytes_FromStringAndSize((const char *)found, (Py_ssize_t)(n_found * sizeof(int64_t)));
    free(found);
    if (out) result = Py_BuildValue("(NO)", out, spaces ? Py_True : Py_False);
done:
    PyBuffer_Release(&buf);
    return result;
}

static PyMethodDef module_methods[] = {
    {"hashset_add", hashset_add, METH_VARARGS, "insert uint64 hashes into a HashSet64 table: (is_new per hash, how many)"},
    {"odd_lines", odd_lines, METH_VARARGS, "(lines holding one of the odd byte sequences, whether spaces need collapsing)"},
    {"hash_lines", hash_lines, METH_VARARGS, "uint64 dedup hash of each line of data (n_lines lines joined by '\\n')"},
    {NULL, NULL, 0, NULL},
};

static PyMethodDef WordTable_methods[] = {
    {"lookup", (PyCFunction)WordTable_lookup, METH_VARARGS, "find the words of data; the missing ones, now pending"},
    {"fill", (PyCFunction)WordTable_fill, METH_VARARGS, "the ids of the pending words"},
    {"fill_groups", (PyCFunction)WordTable_fill_groups, METH_VARARGS, "the ids of the pending words, from SentencePiece's lists per group"},
    {"emit", (PyCFunction)WordTable_emit, METH_VARARGS, "(ids, ids per line, bad lines) of the last lookup"},
    {NULL, NULL, 0, NULL},
};

static PySequenceMethods WordTable_as_sequence = {.sq_length = (lenfunc)WordTable_len};

static PyTypeObject WordTableType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "xlmkit.data._wordtable.WordTable",
    .tp_basicsize = sizeof(WordTable),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)WordTable_init,
    .tp_dealloc = (destructor)WordTable_dealloc,
    .tp_methods = WordTable_methods,
    .tp_as_sequence = &WordTable_as_sequence,
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, .m_name = "_wordtable", .m_size = -1,
                                    .m_methods = module_methods};

PyMODINIT_FUNC PyInit__wordtable(void) {
    if (PyType_Ready(&WordTableType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    Py_INCREF(&WordTableType);
    if (PyModule_AddObject(m, "WordTable", (PyObject *)&WordTableType) < 0) {
        Py_DECREF(&WordTableType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
