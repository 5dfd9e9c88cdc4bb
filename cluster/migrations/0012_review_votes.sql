-- Helpful votes on reviews (issue 10): one per shopper and review, so sort=helpful
-- counts people, not clicks. reviews.helpful is the count, kept in the same
-- transaction as the vote. Erasing an account deletes its votes (the counts stay).

CREATE TABLE review_votes (
    review_id   text NOT NULL REFERENCES reviews (review_id),
    user_id     text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (review_id, user_id)
);
CREATE INDEX review_votes_by_voter ON review_votes (user_id);
