/* test_api_tools.c - tool calling in the protocol layer without a network:
 * each chat family's rendering of tools, assistant calls and tool results
 * (expected strings written by hand from the reference templates: Qwen2.5 for
 * chatml, Llama 3.1, Mistral v0.3, and our documented gemma convention), the
 * request fields' validation, the forcing grammar (a call in the family's
 * syntax is accepted, anything else is not), and the output parser, whole and
 * streamed byte by byte (both must agree).
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "api/api.h"
#include "engine/grammar.h"
#include "engine/tokenizer.h"
#include "kernels/ss_error.h"
#include "testutil.h"
#include "tu_check.h"

#define TOOL_JSON                                                                              \
    "{\"type\": \"function\", \"function\": {\"name\": \"get_weather\", \"parameters\": "    \
    "{\"type\": \"object\", \"properties\": {\"city\": {\"type\": \"string\"}}}}}"

static struct api_tool one_tool[] = {{"get_weather", TOOL_JSON, "<INDENTED>"}};

static const struct api_msg_call call1[] = {{"call_1", "get_weather", "{\"city\": \"Paris\"}"}};

/* system, user, assistant calling, tool result */
static const struct api_chat_msg conv[] = {
    {API_ROLE_SYSTEM, "Be brief.", 9, NULL, 0, NULL},
    {API_ROLE_USER, "Weather in Paris?", 17, NULL, 0, NULL},
    {API_ROLE_ASSISTANT, "", 0, call1, 1, NULL},
    {API_ROLE_TOOL, "sunny", 5, NULL, 0, "call_1"},
};

static void expect(int family, const struct api_tools *t, const char *bos, const char *eos,
                   const char *want) {
    struct api_buf b;
    struct api_error e;
    api_buf_init(&b);
    int rc = api_tmpl_render_tools(family, conv, 4, t, bos, eos, &b, &e);
    ck_assert_msg(rc == 0, "%s: %s", api_tmpl_name(family), e.message);
    ck_assert_msg(b.data && strcmp(b.data, want) == 0, "%s:\n got  [%s]\n want [%s]",
                  api_tmpl_name(family), b.data ? b.data : "", want);
    api_buf_free(&b);
}

START_TEST(test_render) {
    struct api_tools t = {1, one_tool, API_TOOLS_AUTO, -1, 1, 0};
    expect(API_TMPL_CHATML, &t, "", "",
           "<|im_start|>system\nBe brief.\n\n# Tools\n\nYou may call one or more functions to "
           "assist with the user query.\n\nYou are provided with function signatures within "
           "<tools></tools> XML tags:\n<tools>\n" TOOL_JSON "\n</tools>\n\nFor each function "
           "call, return a json object with function name and arguments within "
           "<tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, "
           "\"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n"
           "<|im_start|>user\nWeather in Paris?<|im_end|>\n"
           "<|im_start|>assistant\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": "
           "{\"city\": \"Paris\"}}\n</tool_call><|im_end|>\n"
           "<|im_start|>user\n<tool_response>\nsunny\n</tool_response><|im_end|>\n"
           "<|im_start|>assistant\n");
    expect(API_TMPL_LLAMA3, &t, "<|begin_of_text|>", "",
           "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nEnvironment: ipython\n"
           "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\nBe brief."
           "<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nGiven the following "
           "functions, please respond with a JSON for a function call with its proper arguments "
           "that best answers the given prompt.\n\nRespond in the format {\"name\": function "
           "name, \"parameters\": dictionary of argument name and its value}.Do not use "
           "variables.\n\n<INDENTED>\n\nWeather in Paris?<|eot_id|>"
           "<|start_header_id|>assistant<|end_header_id|>\n\n{\"name\": \"get_weather\", "
           "\"parameters\": {\"city\": \"Paris\"}}<|eot_id|>"
           "<|start_header_id|>ipython<|end_header_id|>\n\nsunny<|eot_id|>"
           "<|start_header_id|>assistant<|end_header_id|>\n\n");
    expect(API_TMPL_MISTRAL, &t, "<s>", "</s>",
           "<s>[AVAILABLE_TOOLS] [" TOOL_JSON "][/AVAILABLE_TOOLS][INST] Be brief.\n\nWeather in "
           "Paris? [/INST][TOOL_CALLS] [{\"name\": \"get_weather\", \"arguments\": {\"city\": "
           "\"Paris\"}, \"id\": \"call_1\"}]</s>[TOOL_RESULTS] {\"content\": sunny, \"call_id\": "
           "\"call_1\"}[/TOOL_RESULTS]");
    expect(API_TMPL_GEMMA, &t, "<bos>", "",
           "<bos><start_of_turn>user\nBe brief.\n\nYou can call functions. Their signatures are "
           "listed inside <tools></tools>, one per line:\n<tools>\n" TOOL_JSON "\n</tools>\nTo "
           "call a function, answer only with a JSON object inside <tool_call></tool_call> tags, "
           "one block per call:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": "
           "<args-json-object>}\n</tool_call>\nResults come back inside "
           "<tool_response></tool_response> tags.\n\nWeather in Paris?<end_of_turn>\n"
           "<start_of_turn>model\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": "
           "{\"city\": \"Paris\"}}\n</tool_call><end_of_turn>\n"
           "<start_of_turn>user\n<tool_response>\nsunny\n</tool_response><end_of_turn>\n"
           "<start_of_turn>model\n");
    /* tool history without tools: rendered, tools not listed */
    expect(API_TMPL_CHATML, NULL, "", "",
           "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWeather in Paris?"
           "<|im_end|>\n<|im_start|>assistant\n<tool_call>\n{\"name\": \"get_weather\", "
           "\"arguments\": {\"city\": \"Paris\"}}\n</tool_call><|im_end|>\n<|im_start|>user\n"
           "<tool_response>\nsunny\n</tool_response><|im_end|>\n<|im_start|>assistant\n");
    /* llama2 has no tool convention */
    struct api_buf b;
    struct api_error e;
    api_buf_init(&b);
    ck_assert_int_eq(api_tmpl_render_tools(API_TMPL_LLAMA2, conv, 4, NULL, "", "", &b, &e),
                     SS_EINVAL);
    ck_assert_int_eq(e.status, 400);
    api_buf_free(&b);
    /* gemma: two tool results in a row share one user turn; content with calls kept */
    static const struct api_chat_msg two[] = {
        {API_ROLE_USER, "q", 1, NULL, 0, NULL},
        {API_ROLE_ASSISTANT, "Let me see.", 11, call1, 1, NULL},
        {API_ROLE_TOOL, "a", 1, NULL, 0, "x"},
        {API_ROLE_TOOL, "b", 1, NULL, 0, "y"},
    };
    api_buf_init(&b);
    ck_assert_int_eq(api_tmpl_render_tools(API_TMPL_GEMMA, two, 4, NULL, "", "", &b, &e), 0);
    ck_assert_str_eq(b.data, "<start_of_turn>user\nq<end_of_turn>\n<start_of_turn>model\nLet me "
                             "see.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": "
                             "{\"city\": \"Paris\"}}\n</tool_call><end_of_turn>\n"
                             "<start_of_turn>user\n<tool_response>\na\n</tool_response>\n"
                             "<tool_response>\nb\n</tool_response><end_of_turn>\n"
                             "<start_of_turn>model\n");
    api_buf_free(&b);
}
END_TEST

/* ---------------------------------------------------------------- requests */

static struct tu_gen_tok gtok;

static struct api_model_info mi_for(int family) {
    struct api_model_info mi = {"m", 8192, tok_n_vocab(gtok.t), gtok.t, 0, family, 0, 0};
    return mi;
}

#define TOOLS_FIELD                                                                            \
    "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"get_weather\","                 \
    "\"description\":\"Weather. \\u00e9\",\"parameters\":{\"type\":\"object\",\"properties\":"  \
    "{\"city\":{\"type\":\"string\",\"maxLength\":8},\"days\":{\"type\":\"integer\","           \
    "\"minimum\":1,\"maximum\":7}},\"required\":[\"city\",\"days\"],"                           \
    "\"additionalProperties\":false}}},{\"type\":\"function\",\"function\":{\"name\":\"ping\"}}]"
#define MSGS "\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]"

static int parse(int family, const char *body, struct api_completion *c, struct api_error *e) {
    struct api_model_info mi = mi_for(family);
    memset(e, 0, sizeof(*e));
    return api_chat_parse(&mi, body, strlen(body), c, e);
}

static void expect_err(const char *body, const char *param, const char *needle) {
    struct api_completion c;
    struct api_error e;
    int rc = parse(API_TMPL_CHATML, body, &c, &e);
    ck_assert_msg(rc < 0, "accepted: %s", body);
    ck_assert_msg(e.status == 400 && strcmp(e.param, param) == 0 && strstr(e.message, needle),
                  "%s: %d '%s' (%s), want '%s' with '%s'", body, e.status, e.param, e.message,
                  param, needle);
}

START_TEST(test_validation) {
    tu_gen_tok_load(&gtok, "test_api_tools", "bpe");
    expect_err("{" MSGS ",\"tools\":{}}", "tools", "must be an array");
    expect_err("{" MSGS ",\"tools\":[1]}", "tools", "tools[0]");
    expect_err("{" MSGS ",\"tools\":[{\"type\":\"code\",\"function\":{\"name\":\"a\"}}]}", "tools",
               "\"function\"");
    expect_err("{" MSGS ",\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"a b\"}}]}",
               "tools", "function.name");
    expect_err("{" MSGS ",\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"a\"}},"
               "{\"type\":\"function\",\"function\":{\"name\":\"a\"}}]}",
               "tools", "already used");
    expect_err("{" MSGS ",\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"a\","
               "\"parameters\":{\"type\":\"object\",\"properties\":{\"x\":{\"type\":\"int\"}}}}}]}",
               "tools", "tools[0].function.parameters");
    expect_err("{" MSGS ",\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"a\","
               "\"parameters\":{\"type\":\"string\"}}}]}",
               "tools", "describe an object");
    expect_err("{" MSGS "," TOOLS_FIELD ",\"tool_choice\":{\"type\":\"function\",\"function\":"
               "{\"name\":\"nope\"}}}",
               "tool_choice", "not in 'tools'");
    expect_err("{" MSGS "," TOOLS_FIELD ",\"tool_choice\":\"always\"}", "tool_choice", "must be");
    expect_err("{" MSGS ",\"tool_choice\":\"required\"}", "tool_choice", "needs");
    expect_err("{" MSGS "," TOOLS_FIELD ",\"parallel_tool_calls\":3}", "parallel_tool_calls", "");
    expect_err("{" MSGS ",\"functions\":[{\"name\":\"a\"}]}", "functions", "legacy");
    expect_err("{" MSGS "," TOOLS_FIELD ",\"tool_choice\":\"required\","
               "\"response_format\":{\"type\":\"json_object\"}}",
               "tool_choice", "cannot be combined");
    /* message-level tool history errors */
    expect_err("{\"messages\":[{\"role\":\"tool\",\"content\":\"x\"}]}", "messages", "tool_call_id");
    expect_err("{\"messages\":[{\"role\":\"user\",\"content\":\"q\"},{\"role\":\"assistant\","
               "\"tool_calls\":[{\"id\":\"c\",\"type\":\"function\",\"function\":{\"name\":\"f\","
               "\"arguments\":\"not json\"}}]}]}",
               "messages", "arguments");
    expect_err("{\"messages\":[{\"role\":\"user\",\"content\":\"q\",\"tool_calls\":[]}]}",
               "messages", "only assistant");
    /* accepted: auto keeps no grammar, none drops the tools */
    struct api_completion c;
    struct api_error e;
    ck_assert_msg(parse(API_TMPL_CHATML, "{" MSGS "," TOOLS_FIELD "}", &c, &e) == 0, "%s",
                  e.message);
    ck_assert_ptr_nonnull(c.tools);
    ck_assert_int_eq(c.tools->n, 2);
    ck_assert_int_eq(c.tools->choice, API_TOOLS_AUTO);
    ck_assert_ptr_null(c.p.grammar);
    /* the prompt's tool JSON is json.dumps style, non-ASCII kept */
    ck_assert_str_eq(c.tools->t[1].json,
                     "{\"type\": \"function\", \"function\": {\"name\": \"ping\"}}");
    ck_assert_msg(strstr(c.tools->t[0].json, "\"description\": \"Weather. \xc3\xa9\", "
                                             "\"parameters\": {\"type\": \"object\""),
                  "%s", c.tools->t[0].json);
    ck_assert_msg(strstr(c.tools->t[0].json4, "{\n    \"type\": \"function\",\n    \"function\": "
                                              "{\n        \"name\": \"get_weather\","),
                  "%s", c.tools->t[0].json4);
    api_completion_free(&c);
    ck_assert(parse(API_TMPL_CHATML, "{" MSGS "," TOOLS_FIELD ",\"tool_choice\":\"none\"}", &c,
                    &e) == 0);
    ck_assert_ptr_null(c.tools);
    api_completion_free(&c);
    tu_gen_tok_free(&gtok);
}
END_TEST

/* ---------------------------------------------------------------- grammar */

static int accepts(const struct gram *g, const char *text) {
    struct gram_matcher *m = NULL;
    ck_assert_int_eq(gram_matcher_new(&m, g, NULL, NULL), 0);
    int ok = gram_matcher_accept_bytes(m, text, strlen(text)) == 0 && gram_matcher_is_complete(m);
    gram_matcher_free(m);
    return ok;
}

/* Calls the family's output parser on the whole text. */
static int parse_calls(const struct api_tools *t, const char *text, struct api_buf *content,
                       struct api_tool_stream *s) {
    api_tool_stream_init(s, t);
    api_buf_init(content);
    ck_assert_int_eq(api_tool_stream_feed(s, text, strlen(text), 1, content), 0);
    return s->n_calls;
}

START_TEST(test_grammar) {
    tu_gen_tok_load(&gtok, "test_api_tools", "bpe");
    static const struct {
        int family;
        const char *good, *good2, *bad;
    } cases[] = {
        {API_TMPL_CHATML,
         "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\", \"days\": 3}}"
         "\n</tool_call>",
         "<tool_call>\n{\"name\": \"ping\", \"arguments\": {}}\n</tool_call>\n<tool_call>\n"
         "{\"name\": \"get_weather\", \"arguments\": {\"city\": \"a\", \"days\": 7}}\n</tool_call>",
         "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\", \"days\": 9}}"
         "\n</tool_call>"},
        {API_TMPL_GEMMA,
         "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\", \"days\": 3}}"
         "\n</tool_call>",
         "<tool_call>\n{\"name\": \"ping\", \"arguments\": { }}\n</tool_call>",
         "{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\", \"days\": 3}}"},
        {API_TMPL_LLAMA3, "{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Oslo\", \"days\": 3}}",
         "{\"name\": \"ping\", \"parameters\": {}}\n{\"name\": \"ping\", \"parameters\": {}}",
         "{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\", \"days\": 3}}"},
        {API_TMPL_MISTRAL, "[{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\", \"days\": 3}}]",
         "[{\"name\": \"ping\", \"arguments\": {}}, {\"name\": \"ping\", \"arguments\": {}}]",
         "[{\"name\": \"ping\", \"arguments\": {\"x\": 1}}]"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct api_completion c;
        struct api_error e;
        ck_assert_msg(parse(cases[i].family, "{" MSGS "," TOOLS_FIELD ",\"tool_choice\":\"required\"}",
                            &c, &e) == 0, "%s", e.message);
        ck_assert_ptr_nonnull(c.p.grammar);
        ck_assert_msg(accepts(c.p.grammar, cases[i].good), "%s: %s", api_tmpl_name(cases[i].family),
                      cases[i].good);
        ck_assert_msg(accepts(c.p.grammar, cases[i].good2), "%s: %s", api_tmpl_name(cases[i].family),
                      cases[i].good2);
        ck_assert_msg(!accepts(c.p.grammar, cases[i].bad), "%s: %s", api_tmpl_name(cases[i].family),
                      cases[i].bad);
        /* what the grammar forces, the parser reads back */
        struct api_tool_stream s;
        struct api_buf content;
        ck_assert_int_eq(parse_calls(c.tools, cases[i].good, &content, &s), 1);
        ck_assert_str_eq(s.calls[0].name, "get_weather");
        ck_assert_str_eq(s.calls[0].args, "{\"city\":\"Oslo\",\"days\":3}");
        ck_assert_uint_eq(content.len, 0);
        api_tool_stream_free(&s);
        api_buf_free(&content);
        ck_assert_int_eq(parse_calls(c.tools, cases[i].good2, &content, &s) >= 1, 1);
        api_tool_stream_free(&s);
        api_buf_free(&content);
        api_completion_free(&c);
        /* named: only that function, and one call */
        ck_assert(parse(cases[i].family, "{" MSGS "," TOOLS_FIELD ",\"tool_choice\":{\"type\":"
                                         "\"function\",\"function\":{\"name\":\"get_weather\"}}}",
                        &c, &e) == 0);
        ck_assert_msg(accepts(c.p.grammar, cases[i].good), "%s", cases[i].good);
        ck_assert(!accepts(c.p.grammar, cases[i].good2));
        api_completion_free(&c);
    }
    tu_gen_tok_free(&gtok);
}
END_TEST

/* ---------------------------------------------------------------- output parser */

static struct api_tool two_tools[] = {{"get_weather", "", ""}, {"ping", "", ""}};

/* The same text fed whole and byte by byte: same content, same calls. */
static void check_parse(int family, int parallel, const char *text, const char *want_content,
                        int want_calls, const char *want_args0) {
    struct api_tools t = {2, two_tools, API_TOOLS_AUTO, -1, parallel, family};
    struct api_tool_stream s;
    struct api_buf whole, piece;
    int n = parse_calls(&t, text, &whole, &s);
    ck_assert_msg(n == want_calls, "%s [%s]: %d calls, want %d", api_tmpl_name(family), text, n,
                  want_calls);
    ck_assert_msg(strcmp(whole.data ? whole.data : "", want_content) == 0,
                  "%s [%s]: content [%s] want [%s]", api_tmpl_name(family), text,
                  whole.data ? whole.data : "", want_content);
    if (want_args0)
        ck_assert_str_eq(s.calls[0].args, want_args0);
    for (int i = 0; i < n; i++)
        ck_assert_msg(strncmp(s.calls[i].id, "call_", 5) == 0 && strlen(s.calls[i].id) == 29, "%s",
                      s.calls[i].id);
    api_tool_stream_free(&s);
    api_tool_stream_init(&s, &t);
    api_buf_init(&piece);
    size_t len = strlen(text);
    for (size_t i = 0; i < len; i++) {
        size_t before = piece.len;
        ck_assert_int_eq(api_tool_stream_feed(&s, text + i, 1, 0, &piece), 0);
        /* content sent so far never holds a marker's text */
        ck_assert(!piece.data || !memmem(piece.data, piece.len, "<tool_call>", 11) ||
                  strstr(want_content, "<tool_call>"));
        (void)before;
    }
    ck_assert_int_eq(api_tool_stream_feed(&s, "", 0, 1, &piece), 0);
    ck_assert_int_eq(s.n_calls, want_calls);
    ck_assert_msg(strcmp(piece.data ? piece.data : "", want_content) == 0,
                  "streamed %s [%s]: content [%s]", api_tmpl_name(family), text,
                  piece.data ? piece.data : "");
    api_tool_stream_free(&s);
    api_buf_free(&whole);
    api_buf_free(&piece);
}

START_TEST(test_output_parse) {
    const int C = API_TMPL_CHATML;
    check_parse(C, 1, "Hello there", "Hello there", 0, NULL);
    check_parse(C, 1, "<tool_call>\n{\"name\": \"ping\", \"arguments\": {}}\n</tool_call>", "", 1, "{}");
    check_parse(C, 1, "Sure. <tool_call>{\"name\":\"get_weather\",\"arguments\":{\"city\":\"Rome\"}}"
                      "</tool_call>\n<tool_call>{\"name\":\"ping\",\"arguments\":\"{}\"}</tool_call> bye",
                "Sure. ", 2, "{\"city\":\"Rome\"}");
    check_parse(C, 0, "<tool_call>{\"name\":\"ping\",\"arguments\":{}}</tool_call><tool_call>"
                      "{\"name\":\"ping\",\"arguments\":{}}</tool_call>", "", 1, NULL);
    /* the closing tag may be missing at the end; "parameters" accepted */
    check_parse(C, 1, "<tool_call>{\"name\":\"ping\",\"parameters\":{\"a\":[1,\"}\"]}}", "", 1,
                "{\"a\":[1,\"}\"]}");
    /* not calls: unknown function, broken JSON, unfinished -> all content */
    check_parse(C, 1, "<tool_call>{\"name\":\"rm\",\"arguments\":{}}</tool_call>",
                "<tool_call>{\"name\":\"rm\",\"arguments\":{}}</tool_call>", 0, NULL);
    check_parse(C, 1, "a <tool_call> oops", "a <tool_call> oops", 0, NULL);
    check_parse(C, 1, "a <tool_call>{\"name\":\"ping\"", "a <tool_call>{\"name\":\"ping\"", 0, NULL);
    check_parse(C, 1, "ends with <tool_c", "ends with <tool_c", 0, NULL);
    /* blanks before a marker: dropped when a call follows, content (whole and
     * streamed alike) when it turns out not to be one (found by fuzz_request) */
    check_parse(C, 1, " <tool_call>\n{\"name\": \"get_weatcity\": 1}}\n</tool_call>",
                " <tool_call>\n{\"name\": \"get_weatcity\": 1}}\n</tool_call>", 0, NULL);
    check_parse(C, 1, "\n <tool_call>{\"name\":\"ping\",\"arguments\":{}}</tool_call>", "", 1, "{}");
    check_parse(C, 1, "  <tool", "  <tool", 0, NULL);
    check_parse(API_TMPL_LLAMA3, 1, "  {\"answer\": 1}", "  {\"answer\": 1}", 0, NULL);
    check_parse(API_TMPL_GEMMA, 1, "<tool_call>\n{\"name\": \"ping\", \"arguments\": {}}\n</tool_call>",
                "", 1, "{}");
    /* llama3: the whole answer, optionally after <|python_tag|>, several with ';' */
    check_parse(API_TMPL_LLAMA3, 1, " {\"name\": \"get_weather\", \"parameters\": {\"city\": \"X\"}}",
                "", 1, "{\"city\":\"X\"}");
    check_parse(API_TMPL_LLAMA3, 1, "<|python_tag|>{\"name\": \"ping\", \"parameters\": {}}; "
                                    "{\"name\": \"ping\", \"parameters\": {}}", "", 2, "{}");
    check_parse(API_TMPL_LLAMA3, 1, "{\"answer\": 42}", "{\"answer\": 42}", 0, NULL);
    check_parse(API_TMPL_LLAMA3, 1, "Text {\"name\": \"ping\"}", "Text {\"name\": \"ping\"}", 0, NULL);
    /* mistral: with or without the [TOOL_CALLS] marker */
    check_parse(API_TMPL_MISTRAL, 1, "[TOOL_CALLS] [{\"name\": \"ping\", \"arguments\": {}}, "
                                     "{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Y\"}}]",
                "", 2, "{}");
    check_parse(API_TMPL_MISTRAL, 1, "[{\"name\": \"ping\", \"arguments\": {}}]", "", 1, "{}");
    check_parse(API_TMPL_MISTRAL, 1, "[1, 2]", "[1, 2]", 0, NULL);
    /* hold-back: a possible marker is not sent until it is known */
    struct api_tools t = {2, two_tools, API_TOOLS_AUTO, -1, 1, C};
    struct api_tool_stream s;
    struct api_buf out;
    api_tool_stream_init(&s, &t);
    api_buf_init(&out);
    api_tool_stream_feed(&s, "Hi <tool", 8, 0, &out);
    ck_assert_uint_eq(out.len, 3);
    api_tool_stream_feed(&s, "box", 3, 0, &out);
    ck_assert_str_eq(out.data, "Hi <toolbox");
    api_tool_stream_free(&s);
    api_buf_free(&out);
}
END_TEST

static Suite *api_tools_suite(void) {
    Suite *s = suite_create("api_tools");
    const struct tu_case tests[] = {
        {"render", test_render},
        {"validation", test_validation},
        {"grammar", test_grammar},
        {"output_parse", test_output_parse},
    };
    tu_check_add(s, tests, TU_NCASES(tests), 0);
    return s;
}

int main(void) {
    int failed = tu_check_run(api_tools_suite());
    return failed ? 1 : 0;
}
