/* kb_search's pure parts: reciprocal rank fusion, the any-word form of a question, and
 * the array literals kb_store and kb_embed send as parameters. */
#include "buf.h"
#include "kb_embed.h"
#include "kb_search.h"
#include "kb_store.h"

#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

Test(kb_rrf, fuses_two_rankings)
{
    const long long a[] = {10, 20, 30};
    const long long b[] = {30, 40, 10};
    struct kb_rrf_item out[6];
    size_t n = kb_rrf_fuse(a, 3, b, 3, 60, out);
    cr_assert_eq(n, 4);
    /* 10: 1/61 + 1/63; 30: 1/63 + 1/61 (tie: best single rank 1 both, smaller id first);
     * 20: 1/62; 40: 1/62 (tie: rank 2 both, smaller id first). */
    cr_assert_eq(out[0].id, 10);
    cr_assert_eq(out[1].id, 30);
    cr_assert_eq(out[2].id, 20);
    cr_assert_eq(out[3].id, 40);
    cr_assert_float_eq(out[0].fused, 1.0 / 61 + 1.0 / 63, 1e-12);
    cr_assert_eq(out[0].rank_a, 1);
    cr_assert_eq(out[0].rank_b, 3);
    cr_assert_eq(out[3].rank_a, 0);
    cr_assert_eq(out[3].rank_b, 2);
}

Test(kb_rrf, agreement_beats_one_strong_vote)
{
    /* 7 is second in both lists; 1 is first in one list only: 2/62 > 1/61. */
    const long long a[] = {1, 7};
    const long long b[] = {2, 7};
    struct kb_rrf_item out[4];
    size_t n = kb_rrf_fuse(a, 2, b, 2, 60, out);
    cr_assert_eq(n, 3);
    cr_assert_eq(out[0].id, 7);
    cr_assert_eq(out[1].id, 1);
    cr_assert_eq(out[2].id, 2);
}

Test(kb_rrf, empty_and_one_sided)
{
    struct kb_rrf_item out[3];
    cr_assert_eq(kb_rrf_fuse(NULL, 0, NULL, 0, 60, out), 0);
    const long long b[] = {5, 6, 7};
    size_t n = kb_rrf_fuse(NULL, 0, b, 3, 60, out);
    cr_assert_eq(n, 3);
    for (size_t i = 0; i < n; i++) {
        cr_assert_eq(out[i].id, b[i], "one list keeps its order");
        cr_assert_eq(out[i].rank_a, 0);
        cr_assert_eq(out[i].rank_b, (int)i + 1);
    }
}

static void check_words(const char *q, const char *any, const char *neg)
{
    char *a = NULL, *n = NULL;
    kb_search_any_words(q, &a, &n);
    if (any)
        cr_assert_str_eq(a, any, "%s", q);
    else
        cr_assert_null(a, "%s: %s", q, a);
    if (neg)
        cr_assert_str_eq(n, neg, "%s", q);
    else
        cr_assert_null(n, "%s: %s", q, n);
    free(a);
    free(n);
}

Test(kb_search, any_words)
{
    check_words("How do I reset my password?", "How or do or I or reset or my or password?", NULL);
    check_words("  \"reset link\"  -billing  or  OR x ", "reset or link or x", "billing");
    check_words("-a -b", NULL, "a or b");
    check_words("", NULL, NULL);
    check_words("\"\" - --", NULL, NULL);
    check_words("what does --test-shard do -x", "what or does or test-shard or do", "x");
}

Test(kb_store, text_array_literal)
{
    struct buf b = BUF_INIT;
    const char *v[] = {"plain", "with \"quotes\"", "back\\slash", "", "{,}", NULL};
    kb_store_text_array(&b, v, 6);
    cr_assert_str_eq(b.data,
                     "{\"plain\",\"with \\\"quotes\\\"\",\"back\\\\slash\",\"\",\"{,}\",\"\"}");
    buf_free(&b);
    kb_store_text_array(&b, NULL, 0);
    cr_assert_str_eq(b.data, "{}");
    buf_free(&b);
}

Test(kb_embed, float_array_literal)
{
    struct buf b = BUF_INIT;
    const float v[] = {0.5f, -2.5e-05f, 1};
    kb_embed_float_array(&b, v, 3);
    cr_assert_str_eq(b.data, "{0.5,-2.49999994e-05,1}");
    buf_free(&b);
}
