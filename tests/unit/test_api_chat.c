/* test_api_chat.c - the chat side of the protocol layer without a network:
 * the chat templates of each family (expected strings written by hand from
 * the families' documented formats) and their detection, chat completion
 * requests (/v1/chat/completions parsing and rendering), and /tokenize and
 * /detokenize. Outputs are checked by parsing them back with cJSON. The rest
 * of the protocol layer is tested by test_api.c.
 */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "api/api.h"
#include "engine/gguf.h"
#include "kernels/ss_error.h"
#include "engine/tokenizer.h"
#include "testutil.h"
#include "tu_check.h"

/* A model with no tokenizer: token-id prompts only. */
static struct api_model_info mi_ids(void) {
    struct api_model_info mi = {"tiny", 64, 100, NULL, 1700000000, API_TMPL_NONE, 0, 0};
    return mi;
}

/* ---------------------------------------------------------------- templates */

static const struct api_chat_msg conv4[] = {
    {API_ROLE_SYSTEM, "You are helpful.", 16, NULL, 0, NULL},
    {API_ROLE_USER, " Hi \n", 5, NULL, 0, NULL},
    {API_ROLE_ASSISTANT, "Hello!", 6, NULL, 0, NULL},
    {API_ROLE_USER, "How are you?", 12, NULL, 0, NULL},
};

static void expect_render(int family, const struct api_chat_msg *m, int n, const char *bos,
                          const char *eos, const char *want) {
    struct api_buf b;
    struct api_error e;
    api_buf_init(&b);
    int rc = api_tmpl_render(family, m, n, bos, eos, &b, &e);
    ck_assert_msg(rc == 0, "%s: %s", api_tmpl_name(family), e.message);
    ck_assert_msg(b.data && strcmp(b.data, want) == 0, "%s:\n got  [%s]\n want [%s]",
                  api_tmpl_name(family), b.data ? b.data : "", want);
    api_buf_free(&b);
}

static void expect_render_err(int family, const struct api_chat_msg *m, int n) {
    struct api_buf b;
    struct api_error e;
    api_buf_init(&b);
    memset(&e, 0, sizeof(e));
    int rc = api_tmpl_render(family, m, n, "<s>", "</s>", &b, &e);
    ck_assert_msg(rc == SS_EINVAL, "%s accepted a bad conversation", api_tmpl_name(family));
    ck_assert_int_eq(e.status, 400);
    ck_assert_str_eq(e.param, "messages");
    api_buf_free(&b);
}

START_TEST(test_templates) {
    expect_render(API_TMPL_CHATML, conv4, 4, "", "</s>",
                  "<|im_start|>system\nYou are helpful.<|im_end|>\n"
                  "<|im_start|>user\n Hi \n<|im_end|>\n"
                  "<|im_start|>assistant\nHello!<|im_end|>\n"
                  "<|im_start|>user\nHow are you?<|im_end|>\n"
                  "<|im_start|>assistant\n");
    expect_render(API_TMPL_LLAMA3, conv4, 4, "<|begin_of_text|>", "<|end_of_text|>",
                  "<|begin_of_text|>"
                  "<|start_header_id|>system<|end_header_id|>\n\nYou are helpful.<|eot_id|>"
                  "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
                  "<|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>"
                  "<|start_header_id|>user<|end_header_id|>\n\nHow are you?<|eot_id|>"
                  "<|start_header_id|>assistant<|end_header_id|>\n\n");
    expect_render(API_TMPL_LLAMA2, conv4, 4, "<s>", "</s>",
                  /* strip() applies to the joined "<<SYS>>...user" text: the user
                   * text keeps its leading blank here */
                  "<s>[INST] <<SYS>>\nYou are helpful.\n<</SYS>>\n\n Hi [/INST] Hello! </s>"
                  "<s>[INST] How are you? [/INST]");
    expect_render(API_TMPL_MISTRAL, conv4, 4, "<s>", "</s>",
                  "<s>[INST] You are helpful.\n\n Hi \n [/INST]Hello!</s>"
                  "[INST] How are you? [/INST]");
    expect_render(API_TMPL_GEMMA, conv4, 4, "<bos>", "<eos>",
                  "<bos><start_of_turn>user\nYou are helpful.\n\nHi<end_of_turn>\n"
                  "<start_of_turn>model\nHello!<end_of_turn>\n"
                  "<start_of_turn>user\nHow are you?<end_of_turn>\n"
                  "<start_of_turn>model\n");
    /* without a system message; without BOS */
    expect_render(API_TMPL_LLAMA2, conv4 + 1, 1, "<s>", "</s>", "<s>[INST] Hi [/INST]");
    expect_render(API_TMPL_GEMMA, conv4 + 3, 1, "", "",
                  "<start_of_turn>user\nHow are you?<end_of_turn>\n<start_of_turn>model\n");
    expect_render(API_TMPL_MISTRAL, conv4 + 3, 1, "<s>", "</s>",
                  "<s>[INST] How are you? [/INST]");
    expect_render(API_TMPL_LLAMA3, conv4 + 3, 1, "", "",
                  "<|start_header_id|>user<|end_header_id|>\n\nHow are you?<|eot_id|>"
                  "<|start_header_id|>assistant<|end_header_id|>\n\n");

    /* shapes the alternating families reject (their templates raise) */
    static const struct api_chat_msg uu[] = {{API_ROLE_USER, "a", 1, NULL, 0, NULL}, {API_ROLE_USER, "b", 1, NULL, 0, NULL}};
    static const struct api_chat_msg au[] = {{API_ROLE_ASSISTANT, "a", 1, NULL, 0, NULL},
                                             {API_ROLE_USER, "b", 1, NULL, 0, NULL}};
    static const struct api_chat_msg usys[] = {{API_ROLE_USER, "a", 1, NULL, 0, NULL},
                                               {API_ROLE_SYSTEM, "s", 1, NULL, 0, NULL}};
    static const struct api_chat_msg sys_only[] = {{API_ROLE_SYSTEM, "s", 1, NULL, 0, NULL}};
    for (int f = API_TMPL_LLAMA2; f <= API_TMPL_GEMMA; f++) {
        expect_render_err(f, uu, 2);
        expect_render_err(f, au, 2);
        expect_render_err(f, usys, 2);
        expect_render_err(f, sys_only, 1);
    }
    /* chatml and llama3 take any order */
    expect_render(API_TMPL_CHATML, uu, 2, "", "",
                  "<|im_start|>user\na<|im_end|>\n<|im_start|>user\nb<|im_end|>\n"
                  "<|im_start|>assistant\n");
    for (int f = API_TMPL_CHATML; f <= API_TMPL_GEMMA; f++)
        expect_render_err(f, uu, 0);

    struct api_buf b;
    struct api_error e;
    api_buf_init(&b);
    ck_assert_int_eq(api_tmpl_render(API_TMPL_NONE, uu, 1, "", "", &b, &e), SS_EUNSUPPORTED);
    api_buf_free(&b);
}
END_TEST

START_TEST(test_template_detect) {
    int bos = -1;
    const char *gemma = "{{ bos_token }}{%- for m in messages -%}{{ '<start_of_turn>' + role }}";
    ck_assert_int_eq(api_tmpl_detect(gemma, strlen(gemma), &bos), API_TMPL_GEMMA);
    ck_assert_int_eq(bos, 1);
    const char *chatml = "{% for message in messages %}{{'<|im_start|>' + message['role'] + "
                         "'\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}";
    ck_assert_int_eq(api_tmpl_detect(chatml, strlen(chatml), &bos), API_TMPL_CHATML);
    ck_assert_int_eq(bos, 0);
    const char *l3 = "{{ bos_token }}<|start_header_id|>{{ role }}<|end_header_id|>";
    ck_assert_int_eq(api_tmpl_detect(l3, strlen(l3), NULL), API_TMPL_LLAMA3);
    const char *l2 = "{{ bos_token + '[INST] ' + '<<SYS>>\\n' }}";
    ck_assert_int_eq(api_tmpl_detect(l2, strlen(l2), NULL), API_TMPL_LLAMA2);
    const char *mi = "{{ bos_token }}{{ '[INST] ' + message['content'] + ' [/INST]' }}";
    ck_assert_int_eq(api_tmpl_detect(mi, strlen(mi), NULL), API_TMPL_MISTRAL);
    ck_assert_int_eq(api_tmpl_detect("{{ messages }}", 14, &bos), API_TMPL_NONE);
    ck_assert_int_eq(api_tmpl_detect(NULL, 0, &bos), API_TMPL_NONE);
    ck_assert_int_eq(bos, 0);
    /* length-bounded: a marker beyond len is not seen */
    ck_assert_int_eq(api_tmpl_detect(gemma, 10, NULL), API_TMPL_NONE);

    ck_assert_int_eq(api_tmpl_by_name("gemma"), API_TMPL_GEMMA);
    ck_assert_int_eq(api_tmpl_by_name("chatml"), API_TMPL_CHATML);
    ck_assert_int_eq(api_tmpl_by_name("none"), -1);
    ck_assert_int_eq(api_tmpl_by_name("llama"), -1);
    for (int f = API_TMPL_CHATML; f <= API_TMPL_GEMMA; f++)
        ck_assert_int_eq(api_tmpl_by_name(api_tmpl_name(f)), f);
    ck_assert_int_eq(api_tmpl_default_bos(API_TMPL_CHATML), 0);
    ck_assert_int_eq(api_tmpl_default_bos(API_TMPL_LLAMA3), 1);
}
END_TEST

/* ---------------------------------------------------------------- chat requests */

static int chat_parse(const struct api_model_info *mi, const char *body, struct api_completion *c,
                      struct api_error *e) {
    memset(e, 0, sizeof(*e));
    return api_chat_parse(mi, body, strlen(body), c, e);
}

static void expect_chat_err(const struct api_model_info *mi, const char *body, int status,
                            const char *param) {
    struct api_completion c;
    struct api_error e;
    int rc = chat_parse(mi, body, &c, &e);
    ck_assert_msg(rc < 0, "accepted: %s", body);
    ck_assert_msg(e.status == status && strcmp(e.param, param) == 0,
                  "%s: %d '%s' (%s), want %d '%s'", body, e.status, e.param, e.message, status,
                  param);
}

START_TEST(test_chat_parse) {
    struct tu_gen_tok g;
    tu_gen_tok_load(&g, "test_api", "bpe");
    struct api_model_info mi = {"m", 128, tok_n_vocab(g.t), g.t, 0, API_TMPL_CHATML, 0, 0};
    struct api_completion c;
    struct api_error e;
    const char *body =
        "{\"model\":\"m\",\"messages\":[{\"role\":\"system\",\"content\":\"Be brief.\"},"
        "{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"Hi\"},"
        "{\"type\":\"text\",\"text\":\"there\"}]}],\"max_tokens\":5,\"logprobs\":true,"
        "\"top_logprobs\":3,\"n\":2,\"stream\":true}";
    ck_assert_msg(chat_parse(&mi, body, &c, &e) == 0, "%s", e.message);
    const char *want = "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi\nthere"
                       "<|im_end|>\n<|im_start|>assistant\n";
    int32_t ids[512];
    int64_t n = tok_encode(g.t, want, strlen(want), 0, 1, ids, 512);
    ck_assert_int_eq(c.p.n_prompt, n);
    for (int64_t i = 0; i < n; i++)
        ck_assert_int_eq(c.p.prompt[i], ids[i]);
    ck_assert_int_eq(c.kind, API_KIND_CHAT);
    ck_assert_int_eq(c.n, 2);
    ck_assert_int_eq(c.p.logprobs, 3);
    ck_assert_int_eq(c.p.prompt_logprobs, 0);
    ck_assert_int_eq(c.p.max_tokens, 5);
    ck_assert_int_eq(c.stream, 1);
    api_completion_free(&c);

    /* defaults: max_tokens fills the context; logprobs true alone = top 0 */
    ck_assert_int_eq(chat_parse(&mi, "{\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}],"
                                     "\"logprobs\":true}",
                                &c, &e),
                     0);
    ck_assert_int_eq(c.p.max_tokens, 128 - c.p.n_prompt);
    ck_assert_int_eq(c.p.logprobs, 0);
    api_completion_free(&c);
    ck_assert_int_eq(chat_parse(&mi, "{\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"},"
                                     "{\"role\":\"assistant\",\"content\":null}],"
                                     "\"max_completion_tokens\":3,\"max_tokens\":100,"
                                     "\"response_format\":{\"type\":\"text\"},\"tools\":[]}",
                                &c, &e),
                     0);
    ck_assert_int_eq(c.p.max_tokens, 3);
    ck_assert_int_eq(c.p.logprobs, -1);
    api_completion_free(&c);

    /* gemma with BOS: the rendered text starts with the BOS token's text */
    struct api_model_info mg = mi;
    mg.chat_family = API_TMPL_GEMMA;
    mg.chat_bos = 1;
    ck_assert_int_eq(chat_parse(&mg, "{\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}]}",
                                &c, &e),
                     0);
    ck_assert_int_eq(c.p.prompt[0], tok_bos(g.t));
    ck_assert(c.p.n_prompt > 1 && c.p.prompt[1] != tok_bos(g.t)); /* one BOS only */
    api_completion_free(&c);

    const char *u = "\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}]";
    char b2[512];
    expect_chat_err(&mi, "{}", 400, "messages");
    expect_chat_err(&mi, "{\"messages\":{}}", 400, "messages");
    expect_chat_err(&mi, "{\"messages\":[]}", 400, "messages");
    expect_chat_err(&mi, "{\"messages\":[5]}", 400, "messages");
    expect_chat_err(&mi, "{\"messages\":[{\"content\":\"x\"}]}", 400, "messages");
    expect_chat_err(&mi, "{\"messages\":[{\"role\":\"tool\",\"content\":\"x\"}]}", 400,
                    "messages");
    expect_chat_err(&mi, "{\"messages\":[{\"role\":\"user\"}]}", 400, "messages");
    expect_chat_err(&mi, "{\"messages\":[{\"role\":\"user\",\"content\":5}]}", 400, "messages");
    expect_chat_err(&mi,
                    "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\","
                    "\"image_url\":{\"url\":\"x\"}}]}]}",
                    400, "messages");
    expect_chat_err(&mi, "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"text\"}]}]}",
                    400, "messages");
    snprintf(b2, sizeof(b2), "{%s,\"top_logprobs\":2}", u);
    expect_chat_err(&mi, b2, 400, "top_logprobs");
    snprintf(b2, sizeof(b2), "{%s,\"logprobs\":true,\"top_logprobs\":21}", u);
    expect_chat_err(&mi, b2, 400, "top_logprobs");
    snprintf(b2, sizeof(b2), "{%s,\"logprobs\":1}", u);
    expect_chat_err(&mi, b2, 400, "logprobs");
    snprintf(b2, sizeof(b2), "{%s,\"tools\":[{\"type\":\"function\"}]}", u);
    expect_chat_err(&mi, b2, 400, "tools");
    snprintf(b2, sizeof(b2), "{%s,\"response_format\":{\"type\":\"xml\"}}", u);
    expect_chat_err(&mi, b2, 400, "response_format.type");
    snprintf(b2, sizeof(b2),
             "{%s,\"response_format\":{\"type\":\"json_schema\",\"json_schema\":{\"name\":\"x\","
             "\"schema\":{\"type\":\"string\",\"format\":\"email\"}}}}", u);
    expect_chat_err(&mi, b2, 400, "response_format.json_schema.schema");
    snprintf(b2, sizeof(b2), "{%s,\"grammar\":\"root ::= x\"}", u);
    expect_chat_err(&mi, b2, 400, "grammar");
    snprintf(b2, sizeof(b2), "{%s,\"structured_outputs\":{\"regex\":\"a(\"},\"guided_choice\":[\"a\"]}", u);
    expect_chat_err(&mi, b2, 400, "guided_choice");
    snprintf(b2, sizeof(b2), "{%s,\"grammar\":\"root ::= \\\"a\\\" x\"}", u);
    ck_assert(chat_parse(&mi, b2, &c, &e) < 0);
    ck_assert_msg(strstr(e.message, "line 1 col 14: undefined rule 'x'"), "%s", e.message);
    const char *ok[] = {"\"response_format\":{\"type\":\"json_object\"}",
                        "\"response_format\":{\"type\":\"json_schema\",\"json_schema\":{\"name\":\"n\",\"strict\":true,"
                        "\"schema\":{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"integer\"}}}}}",
                        "\"structured_outputs\":{\"choice\":[\"yes\",\"no\"]}", "\"guided_regex\":\"[0-9]+\"",
                        "\"json_schema\":{\"type\":\"boolean\"}", "\"response_format\":{\"type\":\"text\"}"};
    for (int i = 0; i < 6; i++) {
        snprintf(b2, sizeof(b2), "{%s,%s}", u, ok[i]);
        ck_assert_msg(chat_parse(&mi, b2, &c, &e) == 0, "%s: %s", b2, e.message);
        ck_assert_msg((c.p.grammar != NULL) == (i < 5), "%s", b2);
        api_completion_free(&c);
    }
    snprintf(b2, sizeof(b2), "{%s,\"max_completion_tokens\":0}", u);
    expect_chat_err(&mi, b2, 400, "max_completion_tokens");
    snprintf(b2, sizeof(b2), "{%s,\"model\":\"other\"}", u);
    expect_chat_err(&mi, b2, 404, "model");
    snprintf(b2, sizeof(b2), "{%s,\"n\":0}", u);
    expect_chat_err(&mi, b2, 400, "n");
    /* a gemma conversation that does not alternate */
    expect_chat_err(&mg,
                    "{\"messages\":[{\"role\":\"user\",\"content\":\"a\"},"
                    "{\"role\":\"user\",\"content\":\"b\"}]}",
                    400, "messages");
    /* no recognised template: a clear 400 */
    struct api_model_info mn = mi;
    mn.chat_family = API_TMPL_NONE;
    snprintf(b2, sizeof(b2), "{%s}", u);
    ck_assert(chat_parse(&mn, b2, &c, &e) < 0);
    ck_assert_int_eq(e.status, 400);
    ck_assert_msg(strstr(e.message, "chat template") && strstr(e.message, "--chat-template"), "%s",
                  e.message);
    tu_gen_tok_free(&g);
}
END_TEST

/* ---------------------------------------------------------------- tokenize */

START_TEST(test_tokenize) {
    struct tu_gen_tok g;
    tu_gen_tok_load(&g, "test_api", "bpe");
    struct api_model_info mi = {"m", 128, tok_n_vocab(g.t), g.t, 0, API_TMPL_CHATML, 0, 0};
    struct api_buf b;
    struct api_error e;
    const char *text = "Hello world, tokens!";
    int32_t ids[256];
    int64_t n = tok_encode(g.t, text, strlen(text), tok_add_bos(g.t), 0, ids, 256);
    ck_assert(n > 2);
    api_buf_init(&b);
    const char *body = "{\"prompt\":\"Hello world, tokens!\"}";
    ck_assert_int_eq(api_tokenize(&mi, body, strlen(body), &b, &e), 0);
    cJSON *j = cJSON_Parse(b.data);
    ck_assert_ptr_nonnull(j);
    ck_assert_int_eq(cJSON_GetObjectItem(j, "count")->valueint, n);
    ck_assert_int_eq(cJSON_GetObjectItem(j, "max_model_len")->valueint, 128);
    cJSON *tk = cJSON_GetObjectItem(j, "tokens");
    ck_assert_int_eq(cJSON_GetArraySize(tk), n);
    for (int64_t i = 0; i < n; i++)
        ck_assert_int_eq(cJSON_GetArrayItem(tk, (int)i)->valueint, ids[i]);
    cJSON_Delete(j);
    api_buf_free(&b);

    /* without special tokens, then back to text */
    body = "{\"model\":\"m\",\"prompt\":\"Hello world, tokens!\",\"add_special_tokens\":false}";
    ck_assert_int_eq(api_tokenize(&mi, body, strlen(body), &b, &e), 0);
    j = cJSON_Parse(b.data);
    ck_assert_int_eq(cJSON_GetObjectItem(j, "count")->valueint, n - 1);
    char *arr = cJSON_PrintUnformatted(cJSON_GetObjectItem(j, "tokens"));
    cJSON_Delete(j);
    api_buf_free(&b);
    char dbody[2048];
    snprintf(dbody, sizeof(dbody), "{\"tokens\":%s}", arr);
    free(arr);
    ck_assert_int_eq(api_detokenize(&mi, dbody, strlen(dbody), &b, &e), 0);
    j = cJSON_Parse(b.data);
    ck_assert_str_eq(cJSON_GetObjectItem(j, "prompt")->valuestring, text);
    cJSON_Delete(j);
    api_buf_free(&b);

    /* chat messages through the template */
    body = "{\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}]}";
    ck_assert_int_eq(api_tokenize(&mi, body, strlen(body), &b, &e), 0);
    j = cJSON_Parse(b.data);
    const char *r = "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n";
    ck_assert_int_eq(cJSON_GetObjectItem(j, "count")->valueint,
                     tok_encode(g.t, r, strlen(r), 0, 1, ids, 256));
    cJSON_Delete(j);
    api_buf_free(&b);

    /* errors */
    static const struct { const char *body; int status; const char *param; int detok; } bad[] = {
        {"{}", 400, "prompt", 0},
        {"{\"prompt\":5}", 400, "prompt", 0},
        {"{\"prompt\":\"x\",\"model\":\"zz\"}", 404, "model", 0},
        {"{\"prompt\":\"x\",\"add_special_tokens\":1}", 400, "add_special_tokens", 0},
        {"[1]", 400, "", 0},
        {"{\"tokens\":[1,-1]}", 400, "tokens", 1},
        {"{\"tokens\":[1,100000]}", 400, "tokens", 1},
        {"{\"tokens\":[1.5]}", 400, "tokens", 1},
        {"{\"tokens\":\"1\"}", 400, "tokens", 1},
        {"{}", 400, "tokens", 1},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        memset(&e, 0, sizeof(e));
        int rc = bad[i].detok ? api_detokenize(&mi, bad[i].body, strlen(bad[i].body), &b, &e)
                              : api_tokenize(&mi, bad[i].body, strlen(bad[i].body), &b, &e);
        ck_assert_msg(rc < 0 && e.status == bad[i].status && !strcmp(e.param, bad[i].param),
                      "%s: rc %d status %d param '%s'", bad[i].body, rc, e.status, e.param);
        api_buf_free(&b);
    }
    /* no tokenizer */
    struct api_model_info mn = mi_ids();
    ck_assert(api_tokenize(&mn, "{\"prompt\":\"x\"}", 14, &b, &e) < 0);
    ck_assert_int_eq(e.status, 400);
    tu_gen_tok_free(&g);
}
END_TEST

static Suite *api_chat_suite(void) {
    Suite *s = suite_create("api_chat");
    const struct tu_case tests[] = {
        {"templates", test_templates},
        {"template_detect", test_template_detect},
        {"chat_parse", test_chat_parse},
        {"tokenize", test_tokenize},
    };
    tu_check_add(s, tests, TU_NCASES(tests), 0);
    return s;
}

int main(void) {
    int failed = tu_check_run(api_chat_suite());
    return failed != 0;
}
