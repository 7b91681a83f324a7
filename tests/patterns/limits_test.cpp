// Bounded work for any input (issue 15, items 1-6): hostile pattern texts and enormous
// problems are refused quickly with a message naming the field and the limit, never
// by running for minutes, exhausting memory or overflowing the stack.
#include <gtest/gtest.h>

#include <chrono>
#include <functional>
#include <string>

#include <spattn/error.hpp>
#include <spattn/layout.hpp>
#include <spattn/pattern.hpp>

#include "patterns/limits.hpp"
#include "tests/patterns/layout_check.hpp"
#include "tests/support/test_support.hpp"

namespace spattn::test {
namespace {

std::string repeat(const std::string& s, int n) {
  std::string out;
  for (int k = 0; k < n; ++k) out += s;
  return out;
}

// `depth` compositions of one kind around a leaf.
std::string nested(const std::string& open, const std::string& close, int depth,
                   const std::string& leaf = R"({"type":"local_window","window":64})") {
  return repeat(open, depth) + leaf + repeat(close, depth);
}

// Time bounds of these tests are for an optimised build; sanitizer builds run the same
// code several times slower.
#if defined(__SANITIZE_ADDRESS__)
constexpr double kSlowdown = 20;
#else
constexpr double kSlowdown = 1;
#endif

double seconds_of(const std::function<void()>& fn) {
  const auto t0 = std::chrono::steady_clock::now();
  fn();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// The error a call throws (code and message), or kInternal "no error".
std::pair<ErrorCode, std::string> error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return {e.code(), e.what()};
  }
  return {ErrorCode::kInternal, "no error"};
}

void expect_refused(const std::function<void()>& fn, ErrorCode code, const std::vector<std::string>& words) {
  const auto [c, message] = error_of(fn);
  EXPECT_EQ(c, code) << message;
  for (const std::string& w : words) EXPECT_NE(message.find(w), std::string::npos) << "'" << w << "' in: " << message;
  EXPECT_EQ(message.find('\n'), std::string::npos) << "one line: " << message;
}

// Item 1: a composition visited its first member twice per level, so nested
// single-member unions took 2^depth time (28 s at depth 32).
TEST(Limits, NestedSingleMemberUnionsCompileInLinearTime) {
  const int depth = limits::kMaxDepth - 1;  // the deepest allowed nesting around the leaf
  const Pattern p = Pattern::parse(nested(R"({"union":[)", "]}", depth));
  Layout layout;
  const double s = seconds_of([&] { layout = compile_layout(p, Shape{4096, 4096, 1}); });
  // 2^31 visits took minutes; linear work is milliseconds. The bound leaves room for a
  // slow sanitizer build.
  EXPECT_LT(s, 2.0 * kSlowdown) << "compile took " << s << " s";
  const Pattern flat = Pattern::parse(R"({"type":"local_window","window":64})");
  EXPECT_EQ(layout_stats(p, layout).allowed_pairs_total,
            layout_stats(flat, compile_layout(flat, Shape{4096, 4096, 1})).allowed_pairs_total);
}

// Item 2: deep nesting overflowed the stack (SIGSEGV) in the parser, its error path and
// every recursive walk; item 3: parsing cost grew with the cube of the depth.
TEST(Limits, DeepNestingIsRefusedWithoutRecursion) {
  for (const auto& [open, close] : std::vector<std::pair<std::string, std::string>>{
           {R"({"union":[)", "]}"},
           {R"({"intersect":[)", "]}"},
           {R"({"branches":[)", "]}"},
           {R"({"heads":[{"first":0,"count":1,"pattern":)", "}]}"}}) {
    for (int depth : {limits::kMaxDepth, 1000, 10000}) {
      SCOPED_TRACE(open + " x " + std::to_string(depth));
      const std::string text = nested(open, close, depth);
      const double s = seconds_of([&] {
        expect_refused([&] { Pattern::parse(text); }, ErrorCode::kInvalidArgument, {"nested deeper than"});
      });
      EXPECT_LT(s, 1.0 * kSlowdown) << "a 1000-deep intersect took 10 s to parse";
    }
  }
  // A 100 000-deep array in a field: the parser and the message's description of the
  // value both recursed.
  const std::string deep_array = R"({"type":"dense","x":)" + repeat("[", 100000) + repeat("]", 100000) + "}";
  expect_refused([&] { Pattern::parse(deep_array); }, ErrorCode::kInvalidArgument,
                 {"pattern.x[0]", "nested deeper than"});
  const std::string deep_value = R"({"type":"local_window","window":)" + repeat("[", 100000) + repeat("]", 100000) + "}";
  expect_refused([&] { Pattern::parse(deep_value); }, ErrorCode::kInvalidArgument, {"nested deeper than"});
}

// Patterns built in C++ are checked without recursion too.
TEST(Limits, DeepPatternsBuiltInCodeAreRefusedByValidate) {
  Pattern p(LocalWindow{8, 8});
  for (int k = 0; k < 5000; ++k) p = Pattern(Union{{p}});
  expect_refused([&] { p.validate(Shape{64, 64, 1}); }, ErrorCode::kInvalidArgument,
                 {"nested deeper than", std::to_string(limits::kMaxDepth)});
  std::vector<Pattern> many(static_cast<size_t>(limits::kMaxTerms), Pattern(Dense{}));
  expect_refused([&] { Pattern(Union{many}).validate(Shape{64, 64, 1}); }, ErrorCode::kInvalidArgument,
                 {"more than", std::to_string(limits::kMaxTerms), "pattern nodes"});
  many.pop_back();
  EXPECT_NO_THROW(Pattern(Union{many}).validate(Shape{64, 64, 1}));
}

TEST(Limits, TooManyTermsInATextAreRefused) {
  std::string items;
  for (int64_t k = 0; k < limits::kMaxTerms; ++k) items += std::string(k ? "," : "") + R"({"type":"dense"})";
  expect_refused([&] { Pattern::parse(R"({"union":[)" + items + "]}"); }, ErrorCode::kInvalidArgument,
                 {"pattern.union", "more than", std::to_string(limits::kMaxTerms)});
}

// Item 4: a number no double holds escaped as the JSON library's exception (exit 1).
TEST(Limits, NumberOverflowNamesTheField) {
  expect_refused([] { Pattern::parse(R"({"type":"local_window","window":1e400})"); }, ErrorCode::kInvalidArgument,
                 {"pattern.window", "out of range"});
  expect_refused([] { Pattern::parse(R"({"type":"dilated_sparse","block":4,"rates":[1,-1e999]})"); },
                 ErrorCode::kInvalidArgument, {"pattern.rates[1]", "out of range"});
  expect_refused([] { Pattern::parse(R"({"type":"local_window","window":99999999999999999999})"); },
                 ErrorCode::kInvalidArgument, {"pattern.window", "2^40"});
}

// Item 5: the product of grid dimensions wrapped around and passed validation.
TEST(Limits, GridProductCannotOverflow) {
  const char* text = R"({"type":"neighborhood","grid":[16793600,1098438933505],"window":[3,3]})";
  expect_refused([&] { Pattern::parse(text); }, ErrorCode::kInvalidArgument, {"pattern.grid", "2^30"});
  Neighborhood n;
  n.grid = {16793600, 1098438933505};
  n.window = {3, 3};
  // 16793600 * 1098438933505 mod 2^64 is small; the check must not multiply first.
  expect_refused([&] { Pattern(n).validate(Shape{64, 64, 1}); }, ErrorCode::kInvalidArgument, {"pattern.grid"});
  n.grid = {int64_t{1} << 15, int64_t{1} << 15};
  EXPECT_NO_THROW(Pattern::parse(Pattern(n).to_json()));
}

// Item 6: every field limit is checked with the field and the limit named.
TEST(Limits, FieldLimitsNameTheFieldAndTheLimit) {
  auto list = [](size_t n, int64_t first) {
    std::string s;
    for (size_t k = 0; k < n; ++k) s += (k ? "," : "") + std::to_string(first + static_cast<int64_t>(k));
    return "[" + s + "]";
  };
  expect_refused([&] { Pattern::parse(R"({"type":"dilated_sparse","block":4,"rates":)" + list(limits::kMaxRates + 1, 1) + "}"); },
                 ErrorCode::kInvalidArgument, {"pattern.rates", std::to_string(limits::kMaxRates)});
  const std::string segs = list(limits::kMaxSegments + 1, 64);
  expect_refused([&] { Pattern::parse(R"({"type":"longnet","segments":)" + segs + R"(,"rates":)" + segs + "}"); },
                 ErrorCode::kInvalidArgument, {"pattern.segments", std::to_string(limits::kMaxSegments)});
  std::string levels;
  for (size_t k = 0; k <= limits::kMaxLevels; ++k) levels += std::string(k ? "," : "") + R"({"stride":1,"window":2,"block":1})";
  expect_refused([&] { Pattern::parse(R"({"type":"hierarchical","levels":[)" + levels + "]}"); },
                 ErrorCode::kInvalidArgument, {"pattern.levels", std::to_string(limits::kMaxLevels)});
  Custom c;
  c.block = 1;
  for (size_t k = 0; k <= limits::kMaxPairs; ++k) c.pairs.emplace_back(static_cast<int64_t>(k), 0);
  expect_refused([&] { Pattern(c).validate(Shape{64, 64, 1}); }, ErrorCode::kInvalidArgument,
                 {"pattern.pairs", std::to_string(limits::kMaxPairs)});
  expect_refused([] { Pattern(Dense{}).validate(Shape{64, 64, limits::kMaxHeads + 1}); }, ErrorCode::kInvalidArgument,
                 {"heads", std::to_string(limits::kMaxHeads)});
  expect_refused([] { Pattern(Dense{}).validate(Shape{limits::kMaxTokens + 1, 64, 1}); }, ErrorCode::kUnsupported,
                 {"2^30 tokens"});
  // Branches of branches: each LongNet adds its segments.
  std::vector<Pattern> longnets;
  LongNet l;
  for (size_t k = 0; k < limits::kMaxSegments; ++k) {
    l.segments.push_back(64);
    l.rates.push_back(1);
  }
  for (int k = 0; k * static_cast<int>(limits::kMaxSegments) <= limits::kMaxBranches; ++k) longnets.emplace_back(l);
  expect_refused([&] { Pattern(Branches{longnets}).validate(Shape{64, 64, 1}); }, ErrorCode::kInvalidArgument,
                 {"softmax branches", std::to_string(limits::kMaxBranches)});
}

// Item 6: valid but enormous problems are refused quickly with the limit and a way to
// raise it, instead of running for a long time or dying of std::bad_alloc.
TEST(Limits, EnormousLayoutsAreRefusedQuickly) {
  std::string rates;
  for (int r = 1; r <= 64; ++r) rates += (r > 1 ? "," : "") + std::to_string(r);
  const Pattern dilated = Pattern::parse(R"({"type":"dilated_sparse","block":1,"rates":[)" + rates + R"(],"reach":4096})");
  LayoutOptions o;
  o.tile_m = o.tile_n = 128;
  double s = seconds_of([&] {
    expect_refused([&] { compile_layout(dilated, Shape{65536, 65536, 1}, o); }, ErrorCode::kUnsupported,
                   {"row operations", "SPATTN_LAYOUT_MAX_WORK", "dilated_sparse"});
  });
  EXPECT_LT(s, 2.0 * kSlowdown) << "the work limit should be seen coming (it took 14 s to build before)";

  expect_refused([] { compile_layout(Pattern(Dense{}), Shape{16777216, 16777216, 1}); }, ErrorCode::kInvalidArgument,
                 {"tiles", "2^31", "tile_m"});
  LayoutOptions ones;
  ones.tile_m = ones.tile_n = 1;
  expect_refused([&] { compile_layout(Pattern(Dense{}), Shape{65536, 65536, 1}, ones); }, ErrorCode::kInvalidArgument,
                 {"65536 x 65536 tiles", "2^31"});
}

// The budgets refuse what is over them and build what fits: the same layout with a
// budget just below and just above what it needs.
TEST(Limits, BudgetsAreExactAndCanBeRaised) {
  const Pattern p = Pattern::parse(R"({"type":"longnet","segments":[256,512],"rates":[1,2]})");
  const Shape shape{8192, 8192, 4};
  LayoutOptions o;
  o.tile_m = o.tile_n = 64;
  const Layout layout = compile_layout(p, shape, o);
  const int64_t bytes = layout_stats(p, layout).table_bytes;
  ASSERT_GT(bytes, 0);

  LayoutOptions tight = o;
  tight.max_bytes = static_cast<uint64_t>(bytes) / 2;
  expect_refused([&] { compile_layout(p, shape, tight); }, ErrorCode::kUnsupported,
                 {"host memory", "SPATTN_LAYOUT_MAX_BYTES"});
  tight.max_bytes = 0;
  tight.max_work = 1000;
  expect_refused([&] { compile_layout(p, shape, tight); }, ErrorCode::kUnsupported,
                 {"1000 row operations", "longnet"});
  {
    ScopedEnv env("SPATTN_LAYOUT_MAX_WORK", "1000");
    expect_refused([&] { compile_layout(p, shape, o); }, ErrorCode::kUnsupported, {"1000 row operations"});
  }
  {
    ScopedEnv env("SPATTN_LAYOUT_MAX_BYTES", "1K");
    expect_refused([&] { compile_layout(p, shape, o); }, ErrorCode::kUnsupported, {"1.0 KiB"});
  }
  {
    ScopedEnv env("SPATTN_LAYOUT_MAX_BYTES", "lots");
    expect_refused([&] { compile_layout(p, shape, o); }, ErrorCode::kInvalidArgument, {"SPATTN_LAYOUT_MAX_BYTES"});
  }
  LayoutOptions roomy = o;
  roomy.max_bytes = static_cast<uint64_t>(bytes) * 64;
  roomy.max_work = uint64_t{1} << 40;
  const Layout again = compile_layout(p, shape, roomy);
  EXPECT_EQ(layout_stats(p, again).allowed_pairs_total, layout_stats(p, layout).allowed_pairs_total);
}

// A stride beyond the sequence with tiles of one token asked for a table of 2^40 class
// starts (std::bad_alloc); now it is exact like any other.
TEST(Limits, HugeStrideWithUnitTiles) {
  const Pattern p(Strided{int64_t{1} << 40, StrideMode::kRelative});
  LayoutOptions o;
  o.tile_m = o.tile_n = 1;
  compile_and_check(p, Shape{24, 24, 1}, o, "stride 2^40, tiles 1x1");
}

TEST(Limits, DuplicateKeysAreRefused) {
  expect_refused([] { Pattern::parse(R"({"type":"local_window","window":4,"window":8})"); },
                 ErrorCode::kInvalidArgument, {"pattern.window", "duplicate key"});
  expect_refused([] { Pattern::parse(R"({"union":[{"type":"dense","causal":true,"causal":false}]})"); },
                 ErrorCode::kInvalidArgument, {"pattern.union[0].causal", "duplicate key"});
}

// Item 15: control characters of the input were echoed raw, so the one-line error
// spanned several lines.
TEST(Limits, ControlCharactersAreEscapedInMessages) {
  expect_refused([] { Pattern::parse("{\"type\":\"a\\nb\\u001b[31m\"}"); }, ErrorCode::kInvalidArgument,
                 {"'a\\nb\\x1b[31m'"});
  expect_refused([] { Pattern::parse("{\"type\":\"dense\",\"x\\ty\":1}"); }, ErrorCode::kInvalidArgument,
                 {"x\\ty", "unknown field"});
  expect_refused([] { Pattern::parse("local\nwindow"); }, ErrorCode::kInvalidArgument, {"'local\\nwindow'"});
  const auto [code, message] = error_of([] { Pattern::parse("{\"type\":\"a\nb\"}"); });
  EXPECT_EQ(code, ErrorCode::kInvalidArgument);
  EXPECT_EQ(message.find('\n'), std::string::npos) << message;
}

// The ASCII picture is bounded too.
TEST(Limits, PictureCells) {
  expect_refused([] { render_pattern(Pattern(Dense{}), Shape{1 << 20, 1 << 20, 1}, 1, 0, 1 << 30); },
                 ErrorCode::kInvalidArgument, {"max_cells", std::to_string(limits::kMaxPictureCells)});
}

}  // namespace
}  // namespace spattn::test
