// Pattern specs: JSON round trips, presets, and every documented error message.
#include <gtest/gtest.h>

#include <spattn/error.hpp>
#include <spattn/layout.hpp>
#include <spattn/pattern.hpp>

namespace spattn::test {
namespace {

// The examples of DESIGN.md §8.
const char* kExamples[] = {
    R"({"type": "dense"})",
    R"({"type": "local_window", "window": 1024})",
    R"({"type": "local_window", "left": 512, "right": 0})",
    R"({"type": "global_local", "global": 128, "window": 512})",
    R"({"type": "strided", "stride": 64, "mode": "relative"})",
    R"({"type": "strided", "stride": 64, "mode": "columns"})",
    R"({"type": "dilated_sparse", "block": 64, "rates": [1, 2, 4], "reach": 1})",
    R"({"type": "hierarchical", "levels": [{"stride": 64, "window": 256, "block": 64},
                                          {"stride": 256, "window": 1024, "block": 128},
                                          {"stride": 1024, "window": -1, "block": 256}]})",
    R"({"type": "neighborhood", "grid": [64, 64], "window": [7, 7], "dilation": [1, 1]})",
    R"({"type": "longnet", "segments": [2048, 4096, 8192], "rates": [1, 2, 4]})",
    R"({"type": "adaptive", "block": 128, "top_k": 8})",
    R"({"type": "adaptive", "block": 128, "keep_ratio": 0.1})",
    R"({"type": "custom", "block": 128, "pairs": [[0, 0], [1, 0], [1, 1]]})",
    R"({"type": "butterfly", "block": 128})",
    R"({"union": [{"type": "strided", "stride": 64}, {"type": "local_window", "window": 128}]})",
    R"({"intersect": [{"type": "local_window", "window": 128}, {"type": "dense", "causal": true}]})",
    R"({"branches": [{"type": "local_window", "window": 128}, {"type": "longnet", "segments": [64], "rates": [2]}]})",
    R"({"heads": [{"first": 0, "count": 8, "pattern": {"type": "dense"}},
                  {"first": 8, "count": 8, "pattern": {"type": "local_window", "window": 64}}]})",
    R"({"preset": "standard"})",
    R"({"type": "local_window", "window": 64, "causal": true})",
};

TEST(PatternJson, RoundTrips) {
  for (const char* text : kExamples) {
    SCOPED_TRACE(text);
    const Pattern p = Pattern::parse(text);
    const std::string canonical = p.to_json();
    const Pattern q = Pattern::parse(canonical);
    EXPECT_EQ(q.to_json(), canonical);
    EXPECT_TRUE(p == q);
  }
}

TEST(PatternJson, CanonicalForm) {
  EXPECT_EQ(Pattern::parse(R"({"type":"local_window","window":1024})").to_json(),
            R"({"type":"local_window","left":512,"right":512})");
  EXPECT_EQ(Pattern::parse(R"({"window":7,"type":"local_window","causal":true})").to_json(),
            R"({"type":"local_window","left":3,"right":3,"causal":true})");
  EXPECT_EQ(Pattern::parse(R"({"type":"strided","stride":8})").to_json(),
            R"({"type":"strided","stride":8,"mode":"relative"})");
  EXPECT_EQ(Pattern::parse(R"({"type":"neighborhood","grid":[8,8],"window":[3,3]})").to_json(),
            R"({"type":"neighborhood","grid":[8,8],"window":[3,3],"dilation":[1,1]})");
  EXPECT_EQ(Pattern::parse(R"({"type":"dilated_sparse","block":64,"rates":[1,2]})").to_json(),
            R"({"type":"dilated_sparse","block":64,"rates":[1,2],"reach":1})");
  // Custom pairs are sorted and deduplicated.
  EXPECT_EQ(Pattern::parse(R"({"type":"custom","block":4,"pairs":[[1,1],[0,2],[1,1]]})").to_json(),
            R"({"type":"custom","block":4,"pairs":[[0,2],[1,1]]})");
  EXPECT_EQ(Pattern::parse(R"({"union":[{"type":"dense"}],"causal":true})").to_json(),
            R"({"union":[{"type":"dense"}],"causal":true})");
}

TEST(PatternJson, Kinds) {
  EXPECT_EQ(Pattern::parse(kExamples[0]).kind(), "dense");
  EXPECT_EQ(Pattern::parse(kExamples[9]).kind(), "longnet");
  EXPECT_EQ(Pattern::parse(kExamples[14]).kind(), "union");
  EXPECT_EQ(Pattern::parse(kExamples[15]).kind(), "intersect");
  EXPECT_EQ(Pattern::parse(kExamples[16]).kind(), "branches");
  EXPECT_EQ(Pattern::parse(kExamples[17]).kind(), "heads");
  EXPECT_EQ(Pattern::parse(kExamples[9]).branch_count(), 3);
  EXPECT_EQ(Pattern::parse(kExamples[16]).branch_count(), 2);
  EXPECT_EQ(Pattern::parse(kExamples[14]).branch_count(), 1);
}

TEST(PatternJson, Presets) {
  std::vector<std::string> names;
  for (const Preset& p : presets()) {
    names.push_back(p.name);
    EXPECT_FALSE(p.description.empty());
    // Each preset is an ordinary pattern value, and valid.
    EXPECT_NO_THROW(p.pattern.validate(Shape{65536, 65536, 16})) << p.name;
    EXPECT_EQ(Pattern::parse(p.name).to_json(), p.pattern.to_json());
    EXPECT_EQ(Pattern::parse(R"({"preset":")" + p.name + R"("})").to_json(), p.pattern.to_json());
  }
  for (const char* want :
       {"standard", "fine_grained", "long_range", "ultra_sparse", "local_window", "dilated_sparse", "global_local"}) {
    EXPECT_NE(std::find(names.begin(), names.end(), want), names.end()) << want;
  }
  // standard is the hierarchy of DESIGN.md §8; fine_grained has 4 levels.
  EXPECT_EQ(Pattern::parse("standard").to_json(), Pattern::parse(kExamples[7]).to_json());
  EXPECT_EQ(std::get<Hierarchical>(Pattern::parse("fine_grained").node()).levels.size(), 4u);
  EXPECT_EQ(std::get<Hierarchical>(Pattern::parse("long_range").node()).levels.size(), 3u);
  EXPECT_EQ(std::get<Hierarchical>(Pattern::parse("ultra_sparse").node()).levels.size(), 3u);
  EXPECT_EQ(Pattern::parse("global_local").to_json(), R"({"type":"global_local","global":128,"left":256,"right":256})");
  const auto& ds = std::get<DilatedSparse>(Pattern::parse("dilated_sparse").node());
  EXPECT_EQ(ds.block, 64);
  EXPECT_EQ(ds.rates, (std::vector<int64_t>{1, 2, 4}));
  EXPECT_TRUE(Pattern::parse(R"({"preset":"standard","causal":true})").causal());
  EXPECT_TRUE(Pattern::parse("  causal ").causal());
  EXPECT_EQ(Pattern::parse(R"("standard")").to_json(), Pattern::parse("standard").to_json());
}

// Error messages name the JSON path of the bad field and the allowed range.
struct BadSpec {
  const char* spec;
  const char* message;
};

const BadSpec kBadSpecs[] = {
    {R"({"type":"spiral"})", "pattern.type: unknown pattern type 'spiral' (known: dense, local_window,"},
    {R"({"window":3})", "pattern.type: missing; known types: dense,"},
    {R"({"type":7})", "pattern.type: must be a string (got 7)"},
    {R"([1,2])", "pattern: a pattern must be a JSON object"},
    {R"({"type":"dense",)", "pattern: invalid JSON:"},
    {"", "pattern: empty;"},
    {"no_such_preset", "pattern: unknown preset 'no_such_preset' (known: standard, fine_grained,"},
    {R"({"preset":"nope"})", "pattern.preset: unknown preset 'nope' (known: standard,"},
    {R"({"preset":3})", "pattern.preset: must be a preset name (got 3)"},
    {R"({"type":"dense","windw":3})", "pattern.windw: unknown field for a dense pattern (allowed: type, causal)"},
    {R"({"type":"local_window","window":16,"size":3})",
     "pattern.size: unknown field for a local_window pattern (allowed: type, window, left, right, causal)"},
    {R"({"type":"local_window"})", "pattern.window: missing (a local_window pattern needs window, or left and right)"},
    {R"({"type":"local_window","window":-1})", "pattern.window: must be >= 0 (got -1)"},
    {R"({"type":"local_window","left":-3,"right":0})", "pattern.left: must be >= 0 (got -3)"},
    {R"({"type":"local_window","window":4,"left":1})", "pattern.window: give either window or left/right, not both"},
    {R"({"type":"local_window","window":1.5})", "pattern.window: must be an integer (got 1.5)"},
    {R"({"type":"local_window","window":"8"})", "pattern.window: must be an integer (got \"8\")"},
    {R"({"type":"local_window","window":2000000000000})", "pattern.window: must be <= 2^40 (got 2000000000000)"},
    {R"({"type":"local_window","window":8,"causal":1})", "pattern.causal: must be true or false (got 1)"},
    {R"({"type":"global_local","window":8})", "pattern.global: missing (required for a global_local pattern)"},
    {R"({"type":"global_local","global":-1,"window":8})", "pattern.global: must be >= 0 (got -1)"},
    {R"({"type":"strided","stride":0})", "pattern.stride: must be >= 1 (got 0)"},
    {R"({"type":"strided","stride":4,"mode":"diagonal"})",
     "pattern.mode: must be \"relative\" or \"columns\" (got \"diagonal\")"},
    {R"({"type":"dilated_sparse","block":0,"rates":[1]})", "pattern.block: must be >= 1 (got 0)"},
    {R"({"type":"dilated_sparse","block":64,"rates":[]})", "pattern.rates: must list at least one rate"},
    {R"({"type":"dilated_sparse","block":64,"rates":[1,0]})", "pattern.rates[1]: must be >= 1 (got 0)"},
    {R"({"type":"dilated_sparse","block":64,"rates":[1],"reach":-1})", "pattern.reach: must be in [0, 4096] (got -1)"},
    {R"({"type":"dilated_sparse","block":64,"rates":3})", "pattern.rates: must be an array of integers (got 3)"},
    {R"({"type":"hierarchical","levels":[]})", "pattern.levels: must list at least one level"},
    {R"({"type":"hierarchical","levels":[{"stride":0,"window":8,"block":4}]})",
     "pattern.levels[0].stride: must be >= 1 (got 0)"},
    {R"({"type":"hierarchical","levels":[{"stride":4,"window":8,"block":4},{"stride":4,"window":-2,"block":4}]})",
     "pattern.levels[1].window: must be -1 (global) or >= 0 (got -2)"},
    {R"({"type":"hierarchical","levels":[{"stride":4,"window":8,"block":0}]})",
     "pattern.levels[0].block: must be >= 1 (got 0)"},
    {R"({"type":"hierarchical","levels":[{"stride":4,"window":8}]})",
     "pattern.levels[0].block: missing (required for a hierarchical level pattern)"},
    {R"({"type":"hierarchical","levels":[{"stride":4,"window":8,"block":4,"size":1}]})",
     "pattern.levels[0].size: unknown field for a hierarchical level pattern (allowed: stride, window, block)"},
    {R"({"type":"neighborhood","grid":[2,2,2,2],"window":[1,1,1,1]})",
     "pattern.grid: must have 1, 2 or 3 dimensions (got 4)"},
    {R"({"type":"neighborhood","grid":[8,0],"window":[3,3]})", "pattern.grid[1]: must be >= 1 (got 0)"},
    {R"({"type":"neighborhood","grid":[8,8],"window":[3]})",
     "pattern.window: 1 values but grid has 2 dimensions; they must pair up"},
    {R"({"type":"neighborhood","grid":[8,8],"window":[3,0]})", "pattern.window[1]: must be >= 1 (got 0)"},
    {R"({"type":"neighborhood","grid":[8,8],"window":[3,3],"dilation":[1]})",
     "pattern.dilation: 1 values but grid has 2 dimensions; they must pair up"},
    {R"({"type":"neighborhood","grid":[8,8],"window":[3,3],"dilation":[0,1]})",
     "pattern.dilation[0]: must be >= 1 (got 0)"},
    {R"({"type":"adaptive","block":64})",
     "pattern: an adaptive pattern needs exactly one of top_k (>= 1) and keep_ratio (in (0, 1])"},
    {R"({"type":"adaptive","block":64,"top_k":2,"keep_ratio":0.5})",
     "pattern: an adaptive pattern needs exactly one of top_k"},
    {R"({"type":"adaptive","block":64,"top_k":0})", "pattern.top_k: must be >= 1 (got 0)"},
    {R"({"type":"adaptive","block":64,"keep_ratio":0})", "pattern.keep_ratio: must be in (0, 1] (got 0)"},
    {R"({"type":"adaptive","block":64,"keep_ratio":1.5})", "pattern.keep_ratio: must be in (0, 1] (got 1.5)"},
    {R"({"type":"custom","block":4,"pairs":[[0,1],[2]]})",
     "pattern.pairs[1]: must be a [query block, key block] pair (got [2])"},
    {R"({"type":"custom","block":4,"pairs":[[0,-1]]})", "pattern.pairs[0]: block indices must be in [0, 2^40]"},
    {R"({"type":"butterfly","block":0})", "pattern.block: must be >= 1 (got 0)"},
    {R"({"type":"longnet","segments":[2048,4096,8192],"rates":[1,2]})",
     "pattern.segments: 3 values but rates has 2; they must pair up"},
    {R"({"type":"longnet","segments":[2048,0],"rates":[1,2]})", "pattern.segments[1]: must be >= 1 (got 0)"},
    {R"({"type":"longnet","segments":[2048,4096],"rates":[1,0]})", "pattern.rates[1]: must be >= 1 (got 0)"},
    {R"({"type":"longnet","segments":[],"rates":[]})", "pattern.segments: must list at least one segment length"},
    {R"({"union":[]})", "pattern.union: must list at least one pattern"},
    {R"({"union":{"type":"dense"}})", "pattern.union: must be an array of patterns"},
    {R"({"union":[{"type":"dense"},{"type":"longnet","segments":[8,16],"rates":[1,2]}]})",
     "pattern.union[1]: a union member must have a single softmax branch, but this longnet pattern has 2"},
    {R"({"intersect":[{"type":"dense"},{"branches":[{"type":"dense"},{"type":"dense"}]}]})",
     "pattern.intersect[1]: a intersect member must have a single softmax branch"},
    {R"({"union":[{"type":"dense"},{"type":"strided","stride":0}]})", "pattern.union[1].stride: must be >= 1 (got 0)"},
    {R"({"branches":[{"type":"dense"}],"union":[]})", "pattern: has both \"union\" and \"branches\""},
    {R"({"type":"dense","union":[]})", "pattern: has both \"type\" and \"union\"; a pattern has one form"},
    {R"({"union":[{"type":"dense"}],"extra":1})", "pattern.extra: unknown field for a union pattern (allowed: union, causal)"},
    {R"({"heads":[{"first":0,"pattern":{"type":"dense"}}]})",
     "pattern.heads[0].count: missing (required for a head group pattern)"},
    {R"({"heads":[{"first":0,"count":0,"pattern":{"type":"dense"}}]})", "pattern.heads[0].count: must be >= 1 (got 0)"},
    {R"({"heads":[{"first":-1,"count":2,"pattern":{"type":"dense"}}]})", "pattern.heads[0].first: must be >= 0 (got -1)"},
    {R"({"heads":[{"first":0,"count":2,"pattern":{"type":"strided","stride":-4}}]})",
     "pattern.heads[0].pattern.stride: must be >= 1 (got -4)"},
    {R"({"heads":[3]})", "pattern.heads[0]: a head group is {\"first\": f, \"count\": n, \"pattern\": P} (got 3)"},
};

TEST(PatternJson, EveryBadSpecNamesItsField) {
  for (const BadSpec& bad : kBadSpecs) {
    SCOPED_TRACE(bad.spec);
    try {
      Pattern::parse(bad.spec);
      ADD_FAILURE() << "accepted";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
      EXPECT_NE(std::string(e.what()).find(bad.message), std::string::npos)
          << "message: " << e.what() << "\nwanted: " << bad.message;
    }
  }
}

TEST(PatternJson, PathPrefixForEmbeddedSpecs) {
  try {
    Pattern::parse(R"({"type":"strided","stride":0})", "entries[2].pattern");
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("entries[2].pattern.stride: must be >= 1 (got 0)"), std::string::npos)
        << e.what();
  }
}

// Shape-dependent errors come from validate().
struct BadShape {
  const char* spec;
  Shape shape;
  const char* message;
};

const BadShape kBadShapes[] = {
    {R"({"type":"neighborhood","grid":[64,64],"window":[7,7]})", {4000, 4000, 1},
     "pattern.grid: dimensions multiply to 4096 but the problem has Nq = 4000 and Nk = 4000"},
    {R"({"type":"neighborhood","grid":[64],"window":[7]})", {64, 80, 1},
     "pattern.grid: dimensions multiply to 64 but the problem has Nq = 64 and Nk = 80"},
    {R"({"type":"longnet","segments":[64],"rates":[2]})", {64, 128, 1},
     "pattern: longnet is defined for self-attention only and needs Nq == Nk (got Nq = 64, Nk = 128)"},
    {R"({"type":"custom","block":32,"pairs":[[0,0],[4,1]]})", {128, 128, 1},
     "pattern.pairs[1]: query block 4 is out of range [0, 4) for Nq = 128 at block 32"},
    {R"({"type":"custom","block":32,"pairs":[[0,9]]})", {128, 100, 1},
     "pattern.pairs[0]: key block 9 is out of range [0, 4) for Nk = 100 at block 32"},
    {R"({"heads":[{"first":0,"count":4,"pattern":{"type":"dense"}},{"first":2,"count":4,"pattern":{"type":"dense"}}]})",
     {64, 64, 8}, "pattern.heads[1]: heads 2..5 overlap pattern.heads[0]"},
    {R"({"heads":[{"first":0,"count":4,"pattern":{"type":"dense"}}]})", {64, 64, 8},
     "pattern.heads: heads 4..7 are in no group"},
    {R"({"heads":[{"first":2,"count":6,"pattern":{"type":"dense"}}]})", {64, 64, 8},
     "pattern.heads: heads 0..1 are in no group"},
    {R"({"heads":[{"first":0,"count":12,"pattern":{"type":"dense"}}]})", {64, 64, 8},
     "pattern.heads[0]: heads 0..11 are past the last head (8 heads)"},
    {R"({"heads":[{"first":0,"count":2,"pattern":{"type":"longnet","segments":[8],"rates":[2]}}]})", {16, 32, 2},
     "pattern.heads[0].pattern: longnet is defined for self-attention only"},
    {R"({"type":"dense"})", {0, 64, 1}, "shape: Nq must be >= 1 (got 0)"},
    {R"({"type":"dense"})", {64, 0, 1}, "shape: Nk must be >= 1 (got 0)"},
    {R"({"type":"dense"})", {64, 64, 0}, "shape: heads must be >= 1 (got 0)"},
};

TEST(PatternJson, ShapeErrors) {
  for (const BadShape& bad : kBadShapes) {
    SCOPED_TRACE(bad.spec);
    const Pattern p = Pattern::parse(bad.spec);
    try {
      p.validate(bad.shape);
      ADD_FAILURE() << "accepted";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
      EXPECT_NE(std::string(e.what()).find(bad.message), std::string::npos)
          << "message: " << e.what() << "\nwanted: " << bad.message;
    }
    // compile_layout reports the same error.
    EXPECT_THROW(compile_layout(p, bad.shape), Error);
  }
}

// Patterns built in C++ get the same field checks from validate().
TEST(PatternJson, ValidateChecksFieldsOfCxxPatterns) {
  const Pattern p(LongNet{{64, 128}, {1}});
  try {
    p.validate(Shape{256, 256, 4});
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("pattern.segments: 2 values but rates has 1; they must pair up"),
              std::string::npos)
        << e.what();
  }
  EXPECT_THROW(Pattern(Strided{0}).validate(Shape{8, 8, 1}), Error);
  EXPECT_THROW(Pattern(Union{}).validate(Shape{8, 8, 1}), Error);
}

TEST(PatternJson, AdaptiveIsValidButHasNoHostPredicate) {
  const Pattern p = Pattern::parse(R"({"type":"adaptive","block":64,"top_k":4,"causal":true})");
  EXPECT_NO_THROW(p.validate(Shape{1024, 1024, 8}));
  try {
    (void)p.allowed(Shape{1024, 1024, 8}, 0, 5, 3);
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kUnsupported);
  }
  try {
    compile_layout(p, Shape{1024, 1024, 8});
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kUnsupported);
    EXPECT_NE(std::string(e.what()).find("adaptive patterns choose their blocks from the data on the GPU"),
              std::string::npos);
  }
}

}  // namespace
}  // namespace spattn::test
