// The limits on patterns and problems: the one place they are set (patterns/README.md
// lists them). Each bounds the work or memory that a short input could otherwise ask
// for; every check names the field, the value and the limit (exit 2 in the CLI).
//
// Inputs are checked at parse time (Pattern::parse: everything that does not depend on
// the problem) and at validation (Pattern::validate: the shape); compile_layout() then
// bounds what is left -- the layout's memory and the host work of building it -- with
// budgets that can be raised (LayoutOptions, or the environment).
#pragma once

#include <cstddef>
#include <cstdint>

namespace spattn::limits {

// --- pattern specs --------------------------------------------------------------------

// Compositions inside compositions: {"union": [{"intersect": [leaf]}]} has depth 3. Every
// recursive walk of a pattern is bounded by it (the deepest real patterns are ~5).
inline constexpr int kMaxDepth = 32;
// JSON nesting of a pattern text: a composition level takes at most three JSON levels
// (object, array, head-group object), leaves at most three more (custom pairs).
inline constexpr int kMaxJsonDepth = 3 * kMaxDepth + 4;
// Pattern nodes (leaves and compositions) in one pattern.
inline constexpr int64_t kMaxTerms = 1024;
// Size of a pattern's JSON text (a custom pattern with kMaxPairs pairs fits).
inline constexpr std::size_t kMaxJsonBytes = std::size_t{64} << 20;
// Any single integer field (window, stride, block, segment...): index arithmetic on
// values up to this and token indices up to kMaxTokens never overflows int64.
inline constexpr int64_t kMaxValue = int64_t{1} << 40;
// dilated_sparse: rates, and reach (key blocks per rate and side).
inline constexpr std::size_t kMaxRates = 64;
inline constexpr int64_t kMaxReach = 4096;
// hierarchical: levels.
inline constexpr std::size_t kMaxLevels = 32;
// longnet: (segment, rate) branches; the softmax branches of a whole pattern (longnet
// branches and "branches" items), each of which is one layout part at least.
inline constexpr std::size_t kMaxSegments = 64;
inline constexpr int kMaxBranches = 256;
// custom: (query block, key block) pairs.
inline constexpr std::size_t kMaxPairs = std::size_t{1} << 20;
// heads: head groups.
inline constexpr std::size_t kMaxHeadGroups = 4096;

// --- problems -------------------------------------------------------------------------

// Query or key tokens (also the product of a neighborhood grid): slots are int32 with
// room for padding.
inline constexpr int64_t kMaxTokens = int64_t{1} << 30;
// Query heads.
inline constexpr int64_t kMaxHeads = 4096;

// --- layouts --------------------------------------------------------------------------

// Tile sizes in tokens.
inline constexpr int64_t kMaxTile = 4096;
// Query tiles x key tiles of one table (the dense tile grid; 2^31 int32 tile indices).
inline constexpr int64_t kMaxTileGrid = int64_t{1} << 31;
// Cells per side of the ASCII picture (spattn pattern show --cells).
inline constexpr int kMaxPictureCells = 1024;
// Host memory of a layout (tables, token orders, schedule and the scratch that builds
// them). Default: half of the physical memory, at most kDefaultLayoutBytesCap; raised
// or lowered by LayoutOptions::max_bytes or SPATTN_LAYOUT_MAX_BYTES (bytes, K/M/G/T).
inline constexpr uint64_t kDefaultLayoutBytesCap = uint64_t{32} << 30;
// Host work of building a layout, in row operations (one key interval produced or one
// key visited; 1-3 ns each). The default allows several seconds of work (a 1M-token
// LongNet or sliding window takes ~10^7); raised by LayoutOptions::max_work or
// SPATTN_LAYOUT_MAX_WORK. Work projected from a sample of query tiles is refused before
// it starts.
inline constexpr uint64_t kDefaultLayoutWork = uint64_t{1} << 32;

}  // namespace spattn::limits
