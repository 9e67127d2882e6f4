/* Text charts (chart.h): a grid of characters, axes labelled at their ends. */
#include "chart.h"

#include <math.h>
#include <string.h>

enum { WIDTH = 64, HEIGHT = 16 };

static bool usable(double v, bool log_scale) {
  return isfinite(v) && (!log_scale || v > 0);
}

static double scaled(double v, bool log_scale) {
  return log_scale ? log10(v) : v;
}

/* The cell of v on an axis of cells cells from lo to hi (already scaled). */
static int cell(double v, double lo, double hi, int cells) {
  if (hi <= lo)
    return cells / 2;
  int c = (int)lround((v - lo) / (hi - lo) * (cells - 1));
  return c < 0 ? 0 : c >= cells ? cells - 1 : c;
}

void chart_plot(FILE *out, const chart_t *chart, const chart_series_t *series, size_t n) {
  double x_lo = INFINITY, x_hi = -INFINITY, y_lo = INFINITY, y_hi = -INFINITY;
  for (size_t s = 0; s < n; s++) {
    for (size_t i = 0; i < series[s].n; i++) {
      double x = series[s].x[i], y = series[s].y[i];
      if (!usable(x, chart->log_x) || !usable(y, chart->log_y))
        continue;
      x_lo = fmin(x_lo, x), x_hi = fmax(x_hi, x);
      y_lo = fmin(y_lo, y), y_hi = fmax(y_hi, y);
    }
  }
  if (x_lo > x_hi)
    return;
  if (usable(chart->y_min, chart->log_y) && chart->y_min < y_lo)
    y_lo = chart->y_min;

  char grid[HEIGHT][WIDTH + 1];
  for (int r = 0; r < HEIGHT; r++) {
    memset(grid[r], ' ', WIDTH);
    grid[r][WIDTH] = '\0';
  }
  double sx_lo = scaled(x_lo, chart->log_x), sx_hi = scaled(x_hi, chart->log_x);
  double sy_lo = scaled(y_lo, chart->log_y), sy_hi = scaled(y_hi, chart->log_y);
  for (size_t s = 0; s < n; s++) {
    for (size_t i = 0; i < series[s].n; i++) {
      double x = series[s].x[i], y = series[s].y[i];
      if (!usable(x, chart->log_x) || !usable(y, chart->log_y))
        continue;
      int c = cell(scaled(x, chart->log_x), sx_lo, sx_hi, WIDTH);
      int r = HEIGHT - 1 - cell(scaled(y, chart->log_y), sy_lo, sy_hi, HEIGHT);
      grid[r][c] = series[s].mark;
    }
  }

  fprintf(out, "\n  %s\n", chart->title);
  fprintf(out, "  %s%s\n", chart->y_label, chart->log_y ? " (log scale)" : "");
  for (int r = 0; r < HEIGHT; r++) {
    char label[16] = "";
    if (r == 0 || r == HEIGHT - 1 || r == HEIGHT / 2) {
      double sy = sy_hi - (sy_hi - sy_lo) * r / (HEIGHT - 1);
      snprintf(label, sizeof label, "%.3g", chart->log_y ? pow(10, sy) : sy);
    }
    fprintf(out, "  %9s |%s\n", label, grid[r]);
  }
  fprintf(out, "  %9s +", "");
  for (int c = 0; c < WIDTH; c++)
    fputc('-', out);
  char lo[16], mid[16], hi[16];
  double sx_mid = (sx_lo + sx_hi) / 2;
  snprintf(lo, sizeof lo, "%.3g", x_lo);
  snprintf(mid, sizeof mid, "%.3g", chart->log_x ? pow(10, sx_mid) : sx_mid);
  snprintf(hi, sizeof hi, "%.3g", x_hi);
  fprintf(out, "\n  %9s  %-*s%-*s%s\n", "", WIDTH / 2 - (int)strlen(mid) / 2, lo,
          WIDTH / 2 + (int)strlen(mid) / 2 - (int)strlen(hi), mid, hi);
  fprintf(out, "  %9s  %s%s\n", "", chart->x_label, chart->log_x ? " (log scale)" : "");
  fprintf(out, "  %9s ", "");
  for (size_t s = 0; s < n; s++)
    fprintf(out, " %c %s%s", series[s].mark, series[s].name, s + 1 < n ? "  " : "\n");
  fputc('\n', out);
}

void chart_bars(FILE *out, const char *title, const char *unit, const char *const *labels,
                const double *values, size_t n) {
  double most = 0;
  for (size_t i = 0; i < n; i++)
    most = fmax(most, values[i]);
  fprintf(out, "\n  %s\n", title);
  for (size_t i = 0; i < n; i++) {
    int len =
        most > 0 && isfinite(values[i]) ? (int)lround(values[i] / most * (WIDTH - 16)) : 0;
    fprintf(out, "  %12s |", labels[i]);
    for (int c = 0; c < len; c++)
      fputc('#', out);
    fprintf(out, " %.4g %s\n", values[i], unit);
  }
  fputc('\n', out);
}
