#pragma once
/// @file detail/summary_format.hpp
/// Stage 3 of summary.hpp, formatting: draws the tables. Everything a Summary prints is drawn
/// here, from its public accessors only: the Tree style (torchinfo's table) and the Flat style
/// (pytorch-summary's), and the number formats both use (Python's `{:,}`, `{:.2f}`, alignment
/// by characters, the `├─`/`└─` tree).
///
/// A new column goes here: a title in tree_table()'s `titles`, a value in its row loop, and a
/// SummaryOptions flag (summary.hpp) that switches it on. What the column shows must already be
/// in Summary::Row (computed in detail/summary_build.hpp).
///
/// The functions are templates over the Summary type so that this header compiles on its own
/// without the public header (nlohmann/json's detail headers do the same with BasicJsonType).

#include <torchkit/detail/shape.hpp>

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace torchkit::detail::summary {

/// Python's `f"{value:,}"`: 21840 -> "21,840".
inline std::string with_thousands(std::int64_t value) {
  const std::string digits = std::to_string(value < 0 ? -value : value);
  std::string result;
  result.reserve(digits.size() + digits.size() / 3 + 1);
  if (value < 0) {
    result.push_back('-');
  }
  for (std::size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) {
      result.push_back(',');
    }
    result.push_back(digits[i]);
  }
  return result;
}

/// Python's `f"{value:,.2f}"`: 1234.5 -> "1,234.50".
inline std::string with_thousands_2f(double value) {
  std::string text = fmt::format("{:.2f}", value);
  const std::size_t sign = (!text.empty() && text[0] == '-') ? 1 : 0;
  const std::size_t point = text.find('.');
  std::string result = text.substr(0, sign);
  const std::string integer = text.substr(sign, point - sign);
  for (std::size_t i = 0; i < integer.size(); ++i) {
    if (i > 0 && (integer.size() - i) % 3 == 0) {
      result.push_back(',');
    }
    result.push_back(integer[i]);
  }
  result += text.substr(point);
  return result;
}

/// torchinfo's "Total mult-adds" value with its unit: " (M): 0.98", " (G): 8.18", " (M): 0".
/// The unit is T, G or M (the largest one the value reaches, M at least); a whole number is
/// printed without decimals, as torchinfo does.
inline std::string mult_adds_with_unit(std::int64_t count) {
  const auto value = static_cast<double>(count);
  const char* unit = "M";
  double scaled = value / 1e6;
  if (value >= 1e12) {
    unit = "T";
    scaled = value / 1e12;
  } else if (value >= 1e9) {
    unit = "G";
    scaled = value / 1e9;
  }
  const std::string number = scaled == std::floor(scaled) && std::abs(scaled) < 9.0e15
                                 ? with_thousands(static_cast<std::int64_t>(scaled))
                                 : with_thousands_2f(scaled);
  return fmt::format(" ({}): {}", unit, number);
}

/// Bytes as megabytes (1e6), two decimals: 113600 -> "0.11".
inline std::string megabytes(std::int64_t bytes) { return fmt::format("{:.2f}", static_cast<double>(bytes) / 1e6); }

/// Characters (code points) of a UTF-8 string: "├─" is 2.
inline std::size_t characters(std::string_view text) {
  std::size_t count = 0;
  for (const char c : text) {
    count += (static_cast<unsigned char>(c) & 0xC0U) != 0x80U ? 1 : 0;
  }
  return count;
}

inline std::string pad_right(std::string text, std::size_t width) {
  const std::size_t length = characters(text);
  if (length < width) {
    text.append(width - length, ' ');
  }
  return text;
}

inline std::string pad_left(const std::string& text, std::size_t width) {
  const std::size_t length = characters(text);
  return length < width ? std::string(width - length, ' ') + text : text;
}

/// The tree glyphs in front of a row: one entry per level below the root, true where the line
/// of that level goes on below this row; the last entry is this row's own level. ASCII only:
/// torchinfo's `|--`, `'--` and `|`.
inline std::string tree_prefix(const std::vector<bool>& continues, bool ascii_only = false) {
  std::string prefix;
  for (std::size_t level = 0; level < continues.size(); ++level) {
    if (level > 0) {
      prefix += "    ";
    }
    const bool own_level = level + 1 == continues.size();
    if (own_level) {
      prefix += continues[level] ? (ascii_only ? "|--" : "├─") : (ascii_only ? "'--" : "└─");
    } else {
      prefix += continues[level] ? (ascii_only ? "|" : "│") : " ";
    }
  }
  return prefix;
}

// --- the Tree style (torchinfo) -----------------------------------------------------------

/// torchinfo's `col_names` key of a Column (its enumerator's value): "input_size", ...
inline std::string_view column_key(int column) {
  constexpr std::string_view keys[] = {"input_size",   "output_size", "num_params", "params_percent",
                                       "kernel_size",  "mult_adds",   "trainable"};
  return column >= 0 && column < 7 ? keys[column] : std::string_view("?");
}

/// torchinfo's HEADER_TITLES of a Column.
inline std::string_view column_title(int column) {
  constexpr std::string_view titles[] = {"Input Shape",  "Output Shape", "Param #",  "Param %",
                                         "Kernel Shape", "Mult-Adds",    "Trainable"};
  return column >= 0 && column < 7 ? titles[column] : std::string_view("?");
}

/// torchinfo's params_percent: `f"{params / total:>7.2%}"`, `     --` for none.
inline std::string params_percent(std::int64_t params, std::int64_t total) {
  if (total == 0 || params == 0) {
    return "     --";
  }
  return pad_left(fmt::format("{:.2f}%", static_cast<double>(params) / static_cast<double>(total) * 100.0), 7);
}

/// torchinfo's column width (`col_width=25`, the default of torchinfo.summary()) and the least
/// width of the "Layer (type:depth-idx)" column (`layer_name_width=40`, torchinfo's
/// FormattingOptions in formatting.py, which widens it to the longest title rounded up to a
/// multiple of 5, as tree_name_width() does).
inline constexpr std::size_t tree_column_width = 25;
inline constexpr std::size_t tree_least_name_width = 40;

/// A row's title: `Net`, `Conv2d: 1-1`; a placeholder (torchinfo repeats a container so that
/// the tree stays a tree) has no index: `ModuleList: 1`.
template <class Row>
std::string tree_title(const Row& row, bool show_var_name = false) {
  std::string title = row.type;
  if (show_var_name && !row.name.empty()) {
    title += fmt::format(" ({})", row.name.substr(row.name.rfind('.') + 1));  // the attribute name, as torchinfo's var_name
  }
  if (row.depth == 0) {
    return title;
  }
  return row.placeholder ? fmt::format("{}: {}", title, row.depth) : fmt::format("{}: {}-{}", title, row.depth, row.depth_index);
}

/// The width of the title column: torchinfo's 40, or the longest title (indented 5 characters a
/// level) plus one, rounded up to a multiple of 5.
template <class Row>
std::size_t tree_name_width(const std::vector<Row>& rows, bool show_var_name = false) {
  std::size_t longest = 0;
  for (const Row& row : rows) {
    longest = std::max(longest, characters(tree_title(row, show_var_name)) + static_cast<std::size_t>(row.depth) * 5 + 1);
  }
  return longest >= tree_least_name_width ? (longest + 4) / 5 * 5 : tree_least_name_width;
}

/// torchinfo's leftover_params: a container's parameters not shown by the rows below it
/// (leaf rows count their parameters, container rows their own leftover; repeated rows none).
template <class Row>
std::vector<std::int64_t> leftover_params(const std::vector<Row>& rows) {
  std::vector<std::int64_t> leftover(rows.size(), 0);
  for (std::size_t i = rows.size(); i-- > 0;) {
    std::int64_t children = 0;
    for (std::size_t j = i + 1; j < rows.size() && rows[j].depth > rows[i].depth; ++j) {
      if (!rows[j].recursive) {
        children += rows[j].leaf ? rows[j].params : leftover[j];
      }
    }
    leftover[i] = rows[i].params - children;
  }
  return leftover;
}

/// Which tree lines go on below visible row `v`: level l continues where a later visible row of
/// depth l follows before any shallower one.
template <class Row>
std::vector<bool> tree_continues(const std::vector<Row>& rows, const std::vector<std::size_t>& visible, std::size_t v) {
  const int own_depth = rows[visible[v]].depth;
  std::vector<bool> continues(static_cast<std::size_t>(own_depth), false);
  for (int level = 1; level <= own_depth; ++level) {
    for (std::size_t w = v + 1; w < visible.size(); ++w) {
      const int depth = rows[visible[w]].depth;
      if (depth < level) {
        break;
      }
      if (depth == level) {
        continues[static_cast<std::size_t>(level - 1)] = true;
        break;
      }
    }
  }
  return continues;
}

/// The Tree table of a summary: torchinfo's layout, column by column.
template <class Summary>
std::string tree_table(const Summary& summary) {
  using Row = typename Summary::Row;
  const std::vector<Row>& rows = summary.rows();
  const auto& options = summary.options();
  const bool forward_pass = summary.has_forward_pass();
  const int max_depth = options.depth;
  // The columns: as chosen, else Output Shape (with a forward pass), Param # and the two flags.
  std::vector<int> columns;
  for (const auto column : options.columns) {
    columns.push_back(static_cast<int>(column));
  }
  constexpr int output_size = 1, num_params = 2, params_percent_column = 3, kernel_size = 4, mult_adds = 5, trainable = 6;
  if (columns.empty()) {
    if (forward_pass) {
      columns.push_back(output_size);
    }
    columns.push_back(num_params);
    if (forward_pass && options.show_mult_adds) {
      columns.push_back(mult_adds);
    }
    if (options.show_trainable) {
      columns.push_back(trainable);
    }
  }
  std::vector<std::string> titles;
  for (const int column : columns) {
    titles.emplace_back(column_title(column));
  }
  const std::size_t name_width = tree_name_width(rows, options.show_var_names);
  const std::string divider(titles.size() * tree_column_width + name_width, '=');
  auto format_row = [&](const std::string& name, const std::vector<std::string>& values) {
    std::string line = pad_right(name, name_width) + " ";
    for (const std::string& value : values) {
      line += pad_right(value, tree_column_width) + " ";
    }
    line.erase(line.find_last_not_of(' ') + 1);
    return line + "\n";
  };

  std::vector<std::size_t> visible;
  for (std::size_t i = 0; i < rows.size(); ++i) {
    if (rows[i].depth <= max_depth) {
      visible.push_back(i);
    }
  }
  const std::vector<std::int64_t> leftover = leftover_params(rows);
  const char* header = options.show_var_names ? "Layer (type (var_name):depth-idx)" : "Layer (type:depth-idx)";
  std::string table = divider + "\n" + format_row(header, titles) + divider + "\n";
  for (std::size_t v = 0; v < visible.size(); ++v) {
    const std::size_t i = visible[v];
    const Row& row = rows[i];
    // torchinfo's rules: a row at the depth limit shows its whole subtree's count, a container
    // above it only what its visible children do not show; "(n)" marks a frozen count.
    const bool at_max_depth = row.depth == max_depth;
    std::vector<std::string> values;
    for (const int column : columns) {
      switch (column) {
        case 0:  // input_size
          values.push_back(row.input_shape.empty() ? "--" : shape_string(row.input_shape));
          break;
        case output_size:
          values.push_back(row.output_shape.empty() ? "--" : shape_string(row.output_shape));
          break;
        case num_params:
          if (row.params == 0) {
            values.emplace_back("--");
          } else if (row.recursive) {
            values.emplace_back("(recursive)");
          } else if (at_max_depth || row.leaf) {
            const std::string count = with_thousands(row.params);
            values.push_back(row.trainable_params > 0 ? count : "(" + count + ")");
          } else {
            values.push_back(leftover[i] > 0 ? with_thousands(leftover[i]) : "--");
          }
          break;
        case params_percent_column:
          values.push_back(row.recursive && summary.total_params() != 0
                               ? "(recursive)"
                               : params_percent(at_max_depth || row.leaf ? row.params : leftover[i], summary.total_params()));
          break;
        case kernel_size:
          values.push_back(row.kernel_size.empty() ? "--" : shape_string(row.kernel_size));
          break;
        case mult_adds:
          values.push_back(row.mult_adds > 0 && (row.leaf || at_max_depth) ? with_thousands(row.mult_adds) : "--");
          break;
        default:  // trainable
          values.emplace_back(row.params == 0                      ? "--"
                              : row.trainable_params == 0          ? "False"
                              : row.trainable_params == row.params ? "True"
                                                                   : "Partial");
          break;
      }
    }
    table += format_row(tree_prefix(tree_continues(rows, visible, v), options.ascii_only) + tree_title(row, options.show_var_names),
                        values);
  }
  table += divider + "\n";
  table += "Total params: " + with_thousands(summary.total_params()) + "\n";
  table += "Trainable params: " + with_thousands(summary.trainable_params()) + "\n";
  table += "Non-trainable params: " + with_thousands(summary.non_trainable_params()) + "\n";
  if (forward_pass) {
    table += "Total mult-adds" + mult_adds_with_unit(summary.total_mult_adds()) + "\n" + divider + "\n";
    table += "Input size (MB): " + megabytes(summary.input_bytes()) + "\n";
    table += "Forward/backward pass size (MB): " + megabytes(summary.forward_backward_bytes()) + "\n";
    table += "Params size (MB): " + megabytes(summary.param_bytes()) + "\n";
    table += "Estimated Total Size (MB): " + megabytes(summary.total_bytes()) + "\n";
  }
  return table + divider;
}

// --- the Flat style (pytorch-summary) -----------------------------------------------------

/// pytorch-summary's line: `"{:>20}  {:>25} {:>15}"` between rules of 64 characters
/// (torchsummary.py's summary()).
inline constexpr std::size_t flat_rule_width = 64;

inline std::string flat_line(const std::string& name, const std::string& shape, const std::string& params) {
  return pad_left(name, 20) + "  " + pad_left(shape, 25) + " " + pad_left(params, 15) + "\n";
}

/// pytorch-summary numbers a module when its forward returns: children before parents. The
/// order of the rows in which it prints them.
template <class Row>
std::vector<std::size_t> return_order(const std::vector<Row>& rows) {
  std::vector<std::size_t> order;
  std::vector<std::size_t> pending;
  auto emit_down_to = [&](int depth) {
    while (!pending.empty() && rows[pending.back()].depth >= depth) {
      order.push_back(pending.back());
      pending.pop_back();
    }
  };
  for (std::size_t i = 0; i < rows.size(); ++i) {
    emit_down_to(rows[i].depth);
    pending.push_back(i);
  }
  emit_down_to(0);
  return order;
}

/// The Flat table of a summary; `batch_synthesized`: the batch dimension was made by summary()
/// and is printed as -1, as pytorch-summary does.
template <class Summary>
std::string flat_table(const Summary& summary, bool batch_synthesized) {
  const auto& rows = summary.rows();
  const bool forward_pass = summary.has_forward_pass();
  const std::string thin(flat_rule_width, '-');
  const std::string thick(flat_rule_width, '=');
  std::string table = thin + "\n" + flat_line("Layer (type)", "Output Shape", "Param #") + thick + "\n";
  int number = 0;
  for (const std::size_t i : return_order(rows)) {
    const auto& row = rows[i];
    if (row.container || row.placeholder || (forward_pass && !row.called)) {
      continue;
    }
    std::vector<std::int64_t> shape = row.output_shape;
    if (batch_synthesized && !shape.empty()) {
      shape[0] = -1;
    }
    const std::string params = row.recursive && row.own_params > 0 ? "(recursive)" : with_thousands(row.own_params);
    table += flat_line(fmt::format("{}-{}", row.type, ++number), shape.empty() ? "--" : shape_string(shape), params);
  }
  table += thick + "\n";
  table += "Total params: " + with_thousands(summary.total_params()) + "\n";
  table += "Trainable params: " + with_thousands(summary.trainable_params()) + "\n";
  table += "Non-trainable params: " + with_thousands(summary.non_trainable_params()) + "\n";
  table += thin + "\n";
  if (forward_pass) {
    table += "Input size (MB): " + megabytes(summary.input_bytes()) + "\n";
    table += "Forward/backward pass size (MB): " + megabytes(summary.forward_backward_bytes()) + "\n";
    table += "Params size (MB): " + megabytes(summary.param_bytes()) + "\n";
    table += "Estimated Total Size (MB): " + megabytes(summary.total_bytes()) + "\n";
    table += thin;
  }
  return table;
}

}  // namespace torchkit::detail::summary
