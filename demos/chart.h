/*
 * Text charts: a demo's main figure drawn in the terminal, so that a student sees the curve
 * without gnuplot (demos/plots/ draws the same data as PNG and SVG from --csv).
 */
#ifndef DEMO_CHART_H
#define DEMO_CHART_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

/* One curve: n points (x[i], y[i]), each drawn as mark; a point that is not finite, or not
 * positive on a log axis, is left out. */
typedef struct {
  const char *name; /* for the legend */
  char mark;
  const double *x, *y;
  size_t n;
} chart_series_t;

typedef struct {
  const char *title;
  const char *x_label, *y_label;
  bool log_x, log_y;
  double y_min; /* the bottom of the y axis when below the data's least value (NAN: none) */
} chart_t;

/* Draws the series on one set of axes, 64 columns by 16 rows, the later series over the
 * earlier where they meet. Draws nothing when no point can be drawn. */
void chart_plot(FILE *out, const chart_t *chart, const chart_series_t *series, size_t n);

/* A horizontal bar per value (labels[i], values[i] >= 0), scaled to the largest, with the
 * value printed after it in unit. */
void chart_bars(FILE *out, const char *title, const char *unit, const char *const *labels,
                const double *values, size_t n);

#endif /* DEMO_CHART_H */
